"""Kubernetes Events for what the gateway ignores, written at a pace the API server can take.

A hub whose Ingresses carry many problems (a fleet-wide typo in an annotation, a gateway
started on an old fleet) would otherwise post one Event per problem at once. As client-go's
event recorder does, writes go through one queue: a token bucket paces them (a burst, then
a steady rate), an Event already waiting is not queued twice, and a full queue drops what
does not fit (counted, and logged once per burst of drops). Events are best effort: a write
the API refuses (RBAC, a deleted Ingress) is logged at debug level and forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

#: Like client-go's defaults for a client (QPS 5, a burst of 25 events for one object).
BURST = 25
PER_SECOND = 5.0
BACKLOG = 1000  # client-go's broadcaster queue holds 1000 and drops past it too


class EventRecorder:
    def __init__(self, create: Callable[[dict], Awaitable[object]], burst: int = BURST,
                 per_second: float = PER_SECOND, backlog: int = BACKLOG) -> None:
        self._create = create
        self.burst, self.per_second, self.backlog = burst, per_second, backlog
        self._queue: deque[tuple[tuple, dict]] = deque()
        self._waiting: set[tuple] = set()  # the keys in the queue
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self.sent = self.dropped = 0
        self._dropping = False  # in a burst of drops (logged once)

    def record(self, event: dict) -> None:
        """Queue an Event (the same object, reason and message waiting already: skipped)."""
        obj = event.get("involvedObject") or {}
        key = (obj.get("namespace"), obj.get("name"), obj.get("uid"), event.get("reason"),
               event.get("message"))
        if key in self._waiting:
            return
        if len(self._queue) >= self.backlog:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("event queue full (%d waiting): dropping Events until it drains "
                            "(the problems are still logged)", len(self._queue))
            return
        self._dropping = False
        self._queue.append((key, event))
        self._waiting.add(key)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        self._wake.set()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def stop(self) -> None:
        """Stop writing; what is still queued is dropped (best effort)."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _drain(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._take_token()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            key, event = self._queue.popleft()
            self._waiting.discard(key)
            try:
                await self._create(event)
                self.sent += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - best effort, whatever the client raised
                log.debug("cannot record event: %r", exc)

    def _take_token(self) -> float:
        """0 and one token spent, or the seconds until there is one."""
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.per_second
