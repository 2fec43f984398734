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

    `send` queues a copy; the first one schedules `flush`, which writes everything queued at
    once, as one batch with one deadline: at the end of this loop turn, or, when the line
    wrote a batch less than `Limits.mirror_hold` ago, that long from now. Each batch wakes
    the shadow, and on a VM a wake-up (an IPI) costs more than several copies, so a busy line
    sends about one batch per hold period, and a quiet one sends each copy at once.

    Responses come back in order; the parser reports only each message's end (no header
    callbacks; counting ends in Python from raw bytes was tried, and costs several times
    llhttp), and the copies they answer are settled once per read, oldest batch first.
    """

    def __init__(self, sender: MirrorSender, addr: tuple[str, int]) -> None:
        self.sender = sender
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answered = 0  # in the read being parsed
        self.closing = False  # the shadow said Connection: close
        self.out: list[bytes] = []  # queued for the next flush
        self.queued = 0  # copies in `out`
        self.deadlines: deque[float] = deque()  # per batch written and not wholly answered
        self.counts: deque[int] = deque()  # its copies still unanswered (same order)
        self.depth = 0  # copies queued or unanswered
        self.flushing = False
        self.paused = False  # the shadow stopped reading: take no more copies
        self.closed = False
        self.hold = sender.server.limits.mirror_hold
        self.last_flush = -self.hold  # loop time of the last batch written

    async def connect(self) -> None:
        host, port = self.addr
        try:
            await self.sender.server.loop.create_connection(lambda: self, host, port)
        except OSError:
            self.abort()

    def send(self, head: list[bytes], body: list[bytes] | None) -> None:
        self.out += head
        if body:
            self.out += body
        self.queued += 1
        self.depth += 1
        if not self.flushing and self.transport is not None:
            self.flushing = True
            loop = self.sender.server.loop
            if loop.time() - self.last_flush < self.hold:
                loop.call_later(self.hold, self.flush)
            else:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flushing = False
        out = self.out
        if out and self.transport is not None and not self.closed:
            self.out = []
            self.transport.write(b"".join(out))
            sender = self.sender
            self.last_flush = now = sender.server.loop.time()
            self.deadlines.append(now + sender.server.limits.mirror_timeout)
            self.counts.append(self.queued)
            self.queued = 0
            sender._arm_lines()

    def abort(self) -> None:
        """Close the line; every copy on it that has no answer yet fails."""
        if self.closed:
            return
        self.closed = True
        self.out = []
        if self.transport is not None:
            self.transport.abort()
        self.sender.line_closed(self)
        if self.depth:
            self.sender.in_flight -= self.depth
            self.sender._count("failed", self.depth)
        self.depth = self.queued = 0
        self.deadlines.clear()
        self.counts.clear()

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
        broken = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            broken = True
        if self.answered:
            n = min(self.answered, self.depth - self.queued)  # never more than were written
            self.answered = 0
            if n > 0:
                self._settle(n)
        if self.closing:  # the shadow closes after each response:
            self.sender.no_pipelining.add(self.addr)  # later copies go one per connection
        if broken or self.closing:
            self.abort()  # and the ones still on this line fail

    def _settle(self, n: int) -> None:
        """`n` copies were answered: the oldest ones, batch by batch."""
        self.depth -= n
        sender = self.sender
        sender.in_flight -= n
        sender._count("sent", n)
        counts, deadlines = self.counts, self.deadlines
        while n and counts:
            left = counts[0]
            if left > n:
                counts[0] = left - n
                return
            n -= left
            counts.popleft()
            deadlines.popleft()

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
        if self.parser.get_status_code() >= 200:  # not an interim response (100, 103)
            self.answered += 1
            if not self.parser.should_keep_alive():
                self.closing = True
