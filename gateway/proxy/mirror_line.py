"""One mirror line: a connection of its own to a mirror address, carrying pipelined copies
(see gateway/proxy/mirror.py for when copies take a line)."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import httptools

from gateway.proxy.pool import set_nodelay
from gateway.types import pod_tls_context

if TYPE_CHECKING:
    from gateway.proxy.mirror import MirrorSender

PLAIN_HEAD: Final = 8192  # a longer answer head is left to llhttp
PLAIN_BODY: Final = 65536  # so is a longer body (llhttp streams it; a tail would be copied)
RUN_BYTES: Final = 65536  # how long a run of learned answers (`MirrorLine.run`) may be


def plain_length(head: bytes) -> int:
    """The body length of an answer with this head when it is plain: `HTTP/1.1`, a final
    status, one Content-Length up to PLAIN_BODY, no Transfer-Encoding, nothing that says
    close (a false alarm only costs llhttp); -1 otherwise."""
    if not head.startswith(b"HTTP/1.1 ") or not head[9:12].isdigit() or head[9] < 50:
        return -1  # HTTP/1.0 keep-alive rules, interim (1xx) answers: llhttp
    lower = head.lower()
    if b"transfer-encoding" in lower or b"close" in lower:
        return -1
    at = lower.find(b"\r\ncontent-length:")
    if at < 0 or lower.find(b"\r\ncontent-length:", at + 2) >= 0:
        return -1
    value = head[at + 17: head.find(b"\r\n", at + 2)].strip()
    if not value.isdigit() or len(value) > 6:
        return -1
    length = int(value)
    if head[9:12] in (b"204", b"304"):
        return 0  # no body, whatever Content-Length says
    return length if length <= PLAIN_BODY else -1


class MirrorLine(asyncio.Protocol):
    """A connection of its own to one mirror address, carrying pipelined copies.

    `send` queues a copy; the first one schedules `flush`, which writes everything queued at
    once, as one batch with one deadline: at the end of this loop turn, or, when the line
    wrote a batch less than `Limits.mirror_hold` ago, that long from now. Each batch wakes
    the shadow, and on a VM a wake-up (an IPI) costs more than several copies, so a busy line
    sends about one batch per hold period, and a quiet one sends each copy at once.

    Responses come back in order, and the copies they answer are settled once per read,
    oldest batch first. A shadow answers every copy alike, but for its Date line, so the
    answers are counted from raw bytes: an answer whose head is the same as the last plain one
    (`plain_length`) is skipped by its known length, which costs one byte comparison; llhttp
    (reporting only message ends) takes over from the first answer that is not plain, until
    it is back at a message boundary.

    A shadow may close a connection after so many requests (nginx's `keepalive_requests`):
    the sender learns that number (`MirrorSender.budgets`) from the first line it closes,
    and later lines retire once they carried that many copies: they take no more, collect
    their answers and are closed by the shadow, while a new line takes the next copies.
    """

    def __init__(self, sender: MirrorSender, addr: Any) -> None:
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
        self.carried = 0  # copies ever queued on this line
        self.answers = 0  # copies ever answered
        self.budget = sender.budgets.get(addr, 0)  # copies the shadow serves a connection; 0: any
        self.retired = False  # carried its budget: takes no more copies
        self.flushing = False
        self.paused = False  # the shadow stopped reading: take no more copies
        self.closed = False
        self.hold = sender.server.limits.mirror_hold
        self.last_flush = -self.hold  # loop time of the last batch written
        self.raw = True  # counting answers from raw bytes (else llhttp parses them)
        self.tail = b""  # the start of an answer the last read cut
        self.known = b""  # the last plain answer head seen...
        self.known_length = 0  # ...and its body length
        #: The last whole answer learned (`unit` bytes long), repeated up to RUN_BYTES: a read
        #: that is a run of such answers is counted with one comparison.
        self.unit = 0
        self.run = b""
        self.mid = False  # llhttp is inside a message

    async def connect(self) -> None:
        """`addr` (host, port); (host, port, "tls"): TLS without verification or SNI, as
        the proxy's own to HTTPS backends (gateway.types.pod_tls_context); (host, port,
        UpstreamTLS): TLS as the route's proxy-ssl-* say."""
        addr = self.addr
        tls: ssl.SSLContext | None = None
        name: str | None = None
        try:
            if len(addr) == 3:
                if addr[2] == "tls":
                    tls, name = pod_tls_context(), ""
                else:
                    tls, name = self.sender.server.pool.tls_for(addr[2])
            await self.sender.server.loop.create_connection(
                lambda: self, addr[0], addr[1], ssl=tls, server_hostname=name)
        except OSError:
            self.abort()

    def send(self, head: list[bytes], body: list[bytes] | None) -> None:
        self.out += head
        if body:
            self.out += body
        self.queued += 1
        self.depth += 1
        self.carried += 1
        if self.carried == self.budget:
            self.retired = True
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
        answered = 0
        if self.raw:
            if self.tail:
                data = self.tail + data
                self.tail = b""
            answered, odd = self._count_plain(data)
            if odd < 0:
                data = b""
            else:  # not a plain answer: llhttp from there, until a message boundary
                self.raw = False
                data = data[odd:]
        if data:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                broken = True
            answered += self.answered
            self.answered = 0
            self.raw = not self.mid
        if answered:
            n = min(answered, self.depth - self.queued)  # never more than were written
            if n > 0:
                self._settle(n)
        if self.closing:
            self.sender.shadow_closed(self)
        if broken or self.closing or (self.retired and not self.depth):
            self.abort()  # and the ones still on this line fail (a drained retired line: none)

    def _count_plain(self, data: bytes) -> tuple[int, int]:
        """Answers wholly in `data`, and where one that is not plain starts (-1: none; an
        answer cut short is kept in `tail`)."""
        size, unit = len(data), self.unit
        if unit and size % unit == 0 and size <= len(self.run) and self.run.startswith(data):
            return size // unit, -1  # a read of whole answers, each the same as the last learned
        n = pos = 0
        known = self.known
        while pos < size:
            end = pos + len(known)
            # (`known` ends with the blank line. A slice compared costs a third of what
            # `startswith(known, pos)` does, whose arguments are parsed from a tuple.)
            if known and data[pos:end] == known:
                length = self.known_length
            else:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if size - pos > PLAIN_HEAD:
                        return n, pos
                    self.tail = data[pos:]
                    return n, -1
                end += 4
                length = plain_length(data[pos:end])
                if length < 0:
                    return n, pos
                known = self.known = data[pos:end]
                self.known_length = length
                self.unit = 0  # (until this answer is whole)
            stop = end + length
            if stop > size:
                self.tail = data[pos:]
                return n, -1
            if not self.unit:
                self.unit = stop - pos
                self.run = data[pos:stop] * max(1, RUN_BYTES // self.unit)
            n += 1
            pos = stop
        return n, -1

    def _settle(self, n: int) -> None:
        """`n` copies were answered: the oldest ones, batch by batch."""
        self.depth -= n
        self.answers += n
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

    def on_message_begin(self) -> None:
        self.mid = True

    def on_message_complete(self) -> None:
        self.mid = False
        if self.parser.get_status_code() >= 200:  # not an interim response (100, 103)
            self.answered += 1
            if not self.parser.should_keep_alive():
                self.closing = True
