"""The controller's work queue: client-go's rate-limited queue, on asyncio.

Why this shape: events only *name* what to reconcile (a key); the reconciler reads the
current state itself. So a burst of events for one key collapses into one pass (dedup),
a key is never reconciled by two workers at once, a key that changes while it is being
reconciled is reconciled again right after, and failures retry with per-key
exponential backoff instead of hot-looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)


class Requeue(Exception):
    """Raised by a handler to ask for a retry with backoff: expected, so no traceback."""


class ShutDown(Exception):
    """`get()` on a queue that is shut down and empty."""


class WorkQueue(Generic[K]):
    """Dedup by key, no concurrent processing of one key, delayed and rate-limited adds."""

    def __init__(
        self,
        name: str = "workqueue",
        *,
        base_delay: float = 0.005,
        max_delay: float = 60.0,
    ) -> None:
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()  # waiting (queued, or to re-queue after done)
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._shutting_down = False
        #: Keys accepted by add() and handler failures seen by run_workers (for metrics).
        self.adds_total = 0
        self.retries_total = 0

    # ------------------------------------------------------------------ the queue

    def __len__(self) -> int:
        """Keys waiting to be handed out (queue depth)."""
        return len(self._queue)

    @property
    def in_progress(self) -> int:
        """Keys handed out and not yet done."""
        return len(self._processing)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def add(self, key: K) -> None:
        """Queue `key` unless it is already waiting; if it is being processed, re-queue it
        once after `done(key)`."""
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        self.adds_total += 1
        if key in self._processing:
            return
        self._queue.append(key)
        self._ready.set()

    async def get(self) -> K:
        """The next key, now marked as processing; raises `ShutDown` once shut down and drained."""
        while not self._queue:
            if self._shutting_down:
                raise ShutDown(self.name)
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: K) -> None:
        """Processing of `key` finished; re-queue it if it was added meanwhile."""
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._ready.set()

    def shutdown(self) -> None:
        """Refuse new keys, drop pending delayed adds, wake every waiting `get()`.

        Keys already queued are still handed out (as in client-go); then `get()` raises.
        """
        self._shutting_down = True
        self._closed.set()
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._ready.set()

    # ------------------------------------------------------------------ delays and backoff

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` after `delay` seconds; of several pending delays, the earliest wins."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def when(self, key: K) -> float:
        """The backoff for `key`'s next retry, counting this failure (base * 2^failures, capped)."""
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        if n >= 64:
            return self.max_delay
        return min(self.max_delay, self.base_delay * (2**n))

    def add_rate_limited(self, key: K) -> None:
        """Re-add `key` after its per-key exponential backoff."""
        if self._shutting_down:
            return
        self.add_after(key, self.when(key))

    def forget(self, key: K) -> None:
        """Reset `key`'s failure count (it succeeded)."""
        self._failures.pop(key, None)

    def num_requeues(self, key: K) -> int:
        return self._failures.get(key, 0)

    # ------------------------------------------------------------------ helpers

    async def run_workers(
        self, handler: Callable[[K], Awaitable[None]], concurrency: int = 1
    ) -> None:
        """Process keys with `concurrency` workers until the queue is shut down and drained.

        Success forgets the key's failures; an exception is logged and the key retried
        with backoff. Cancelling this cancels the workers.
        """
        workers = [
            asyncio.create_task(self._worker(handler), name=f"{self.name}-worker-{i}")
            for i in range(max(1, concurrency))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            for w in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await w

    async def _worker(self, handler: Callable[[K], Awaitable[None]]) -> None:
        while True:
            try:
                key = await self.get()
            except ShutDown:
                return
            try:
                await handler(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.retries_total += 1
                n = self.num_requeues(key)
                if isinstance(exc, Requeue):
                    log.info("%s: %r requeued (retry %d): %s", self.name, key, n, exc)
                elif n == 0:
                    log.exception("%s: %r failed; retrying with backoff", self.name, key)
                else:  # one line per retry, and retries slow down exponentially
                    log.warning("%s: %r failed again (retry %d): %s", self.name, key, n, exc)
                self.add_rate_limited(key)
            else:
                self.forget(key)
            finally:
                self.done(key)

    def resync_every(self, seconds: float, keys_fn: Callable[[], Iterable[K]]) -> asyncio.Task[None]:
        """Enqueue every key of `keys_fn()` every `seconds` (periodic resync), until shutdown."""

        async def loop() -> None:
            while not self._shutting_down:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), seconds)
                if self._shutting_down:
                    return
                try:
                    keys = list(keys_fn())
                except Exception:
                    log.exception("%s: resync keys_fn failed", self.name)
                    continue
                for key in keys:
                    self.add(key)

        return asyncio.create_task(loop(), name=f"{self.name}-resync")
