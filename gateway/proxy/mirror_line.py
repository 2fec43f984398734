"""One mirror line: a connection of its own to a mirror address, carrying pipelined copies
(see gateway/proxy/mirror.py for when copies take a line)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import httptools

from gateway.proxy.pool import set_nodelay

if TYPE_CHECKING:
    from gateway.proxy.mirror import MirrorSender


class MirrorLine(asyncio.Protocol):
    """A connection of its own to one mirror address, carrying pipelined copies.

    `send` queues a copy; the first one of a loop turn schedules `flush`, which writes
    everything queued at once. Responses come back in order; the parser reports only each
    message's end (no header callbacks), and each end completes the oldest copy.
    """

    def __init__(self, sender: MirrorSender, addr: tuple[str, int]) -> None:
        self.sender = sender
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.out: list[bytes] = []  # queued for the next flush
        self.deadlines: deque[float] = deque()  # one per copy not yet answered, oldest first
        self.depth = 0
        self.flushing = False
        self.paused = False  # the shadow stopped reading: take no more copies
        self.closed = False

    async def connect(self) -> None:
        host, port = self.addr
        try:
            await self.sender.server.loop.create_connection(lambda: self, host, port)
        except OSError:
            self.abort()

    def send(self, head: bytes, body: list[bytes] | None, deadline: float) -> None:
        self.out.append(head)
        if body:
            self.out += body
        self.deadlines.append(deadline)
        self.depth += 1
        if not self.flushing and self.transport is not None:
            self.flushing = True
            self.sender.server.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flushing = False
        out = self.out
        if out and self.transport is not None and not self.closed:
            self.out = []
            self.transport.writelines(out)

    def abort(self) -> None:
        """Close the line; every copy on it that has no answer yet fails."""
        if self.closed:
            return
        self.closed = True
        self.out = []
        if self.transport is not None:
            self.transport.abort()
        self.sender.line_closed(self)
        for _ in range(self.depth):
            self.sender.in_flight -= 1
            self.sender._count("failed")
        self.depth = 0
        self.deadlines.clear()

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tr
        set_nodelay(tr)
        if self.closed:
            tr.abort()
        elif self.out:
            self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.abort()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # -- httptools ----------------------------------------------------------------------

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200 or not self.depth:
            return  # an interim response (103...): its final one follows
        self.depth -= 1
        self.deadlines.popleft()
        self.sender.in_flight -= 1
        self.sender._count("sent")
        if not self.parser.should_keep_alive():  # the shadow closes after each response:
            self.sender.no_pipelining.add(self.addr)  # later copies go one per connection
            self.abort()  # and the ones already on this line fail
