"""ingress-nginx `limit-rate` / `limit-rate-after`: nginx `limit_rate` and `limit_rate_after`
for one response.

nginx lets a response have, at any moment, `rate x (seconds since the request began + 1) +
after` bytes on the wire (its head included), and holds the rest. Here the same allowance is
computed on the loop's clock rather than in whole seconds: the same long-run rate, the same
first second (one second's worth plus `after` at once), smoother afterwards. Held bytes
wait in order while the upstream is not read (the upstream connection's reading pauses, as
for a slow client); a timer releases them as the allowance grows, and the response ends (the
exchange finishes, a pipelined request starts) only once everything has left.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio

    from gateway.proxy.response import ResponseSide

#: Held bytes leave in pieces of about this many seconds of the rate (ticks ~100 ms apart),
#: so a slow rate still shows progress to the read timeout and to the client.
TICK: Final = 0.1


class SendThrottle:
    __slots__ = ("exchange", "rate", "after", "start", "sent", "held", "held_size", "timer",
                 "then")

    def __init__(self, exchange: ResponseSide, rate: int, after: int, start: float,
                 sent: int) -> None:
        self.exchange = exchange
        self.rate = rate  # bytes a second
        self.after = after  # bytes sent before the rate applies
        self.start = start  # when the request began (loop time)
        self.sent = sent  # bytes of this response on the wire (the head, at first)
        self.held: deque[bytes] = deque()
        self.held_size = 0
        self.timer: asyncio.TimerHandle | None = None
        #: What to do once everything held has left (the end of the response).
        self.then: Callable[[], None] | None = None

    def room(self, now: float) -> int:
        return int(self.rate * (now - self.start + 1.0)) + self.after - self.sent

    def write(self, data: bytes) -> None:
        """Send `data` as far as the allowance goes; hold the rest, in order."""
        if self.held:
            self.held.append(data)
            self.held_size += len(data)
            return
        ex = self.exchange
        now = ex.client.loop.time()
        room = self.room(now)
        if room >= len(data):
            self.sent += len(data)
            ex.client.write(data)
            return
        if room > 0:
            ex.client.write(data[:room])
            self.sent += room
            data = data[room:]
        self.held.append(data)
        self.held_size = len(data)
        conn = ex.conn
        if conn is not None:
            conn.pause_reading()  # nothing more from the upstream until this has left
        self._arm(now)

    def _arm(self, now: float) -> None:
        want = min(self.held_size, max(1, int(self.rate * TICK)))
        wait = max(0.001, (want - self.room(now)) / self.rate)
        self.timer = self.exchange.client.loop.call_later(wait, self._release)

    def _release(self) -> None:
        self.timer = None
        ex = self.exchange
        now = ex.client.loop.time()
        room = self.room(now)
        held = self.held
        while held and room > 0:
            piece = held[0]
            if len(piece) <= room:
                held.popleft()
                n = len(piece)
            else:
                held[0] = piece[room:]
                piece = piece[:room]
                n = room
            ex.client.write(piece)
            self.sent += n
            self.held_size -= n
            room -= n
        ex.progress += 1  # bytes moved: the read timeout counts from here
        if held:
            self._arm(now)
            return
        then = self.then
        if then is not None:
            self.then = None
            then()
            return
        conn = ex.conn
        if conn is not None and not ex.client.write_paused:
            conn.resume_reading()

    @property
    def holding(self) -> bool:
        return bool(self.held)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.held.clear()
        self.held_size = 0
        self.then = None
