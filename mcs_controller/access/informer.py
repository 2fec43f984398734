"""Informer: list, then watch, into a local cache, with handlers and secondary indices.

Generic over any `ClusterClient`. Everything above this layer reads the cache, never
the API, so a controller costs one list plus one watch per resource per cluster.

Failure model (the client-go reflector's, simplified):
* a watch stream that ends normally is re-opened from the last seen resourceVersion;
* `Gone` (resume point compacted away) -> relist and dispatch the *difference* against
  the cache as synthetic ADDED / MODIFIED / DELETED events;
* `Unreachable` or any other error -> capped exponential backoff with jitter, then
  relist (which also catches up on whatever changed during the outage).
The cache is kept while the cluster is unreachable: nothing is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable

from mcs_controller.access import errors
from mcs_controller.access.api import JSON, ClusterClient
from mcs_controller.access.resources import Resource

#: (event type ADDED|MODIFIED|DELETED, obj (last known state for DELETED), old or None)
Handler = Callable[[str, JSON, JSON | None], None]
IndexFunc = Callable[[JSON], Iterable[str]]
Key = tuple[str, str]

#: Yield to the event loop every this many objects while applying a (re)list.
_YIELD_EVERY = 256
#: A watch that ends cleanly, empty, this fast is treated like an error (no hot loop).
_QUICK_END = 0.5


def object_key(obj: JSON) -> Key:
    """Cache key: (namespace or "", name)."""
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _identity(obj: JSON) -> JSON:
    return obj


def _newer(held: JSON, incoming: JSON) -> bool:
    """True when `held` is a later version than `incoming` (resourceVersions compared as etcd
    revisions; an opaque, non-numeric one is never judged older)."""
    a, b = _rv(held), _rv(incoming)
    return bool(a and b and a.isdigit() and b.isdigit() and int(a) > int(b))


def _rv(obj: JSON) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


class _Throttle:
    """At most one log line per key every `period` seconds; counts what it swallowed."""

    def __init__(self, period: float = 30.0) -> None:
        self._period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None when this line should be dropped, else how many were dropped before it."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


class Informer:
    """A cache of one resource in one cluster, kept current by list + watch."""

    def __init__(
        self,
        client: ClusterClient,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        watch_timeout: float = 300.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        log: logging.Logger | None = None,
        transform: Callable[[JSON], JSON] | None = None,
    ) -> None:
        self.client = client
        self.cluster: str = client.name
        self.resource: Resource = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.log = log or logging.getLogger(f"{__name__}.{res.plural}")
        #: Trims objects before they are cached (client-go's SetTransform): keep only what
        #: the consumer reads, so large fleets fit in memory.
        self._transform: Callable[[JSON], JSON] = transform or _identity

        #: Set once the first full list is in the cache (and ADDED dispatched for it).
        self.synced = asyncio.Event()
        #: False after list/watch failed with `Unreachable`; True after a successful list.
        self.reachable: bool = True
        #: time.monotonic() when it became unreachable, else None.
        self.unreachable_since: float | None = None
        #: The resourceVersion the next watch resumes from.
        self.resource_version: str | None = None
        #: Completed (re)lists, for metrics and tests.
        self.list_count = 0

        self._cache: dict[Key, JSON] = {}
        self._handlers: list[Handler] = []
        self._reach_handlers: list[Callable[[bool], None]] = []
        self._index_fns: dict[str, IndexFunc] = {}
        self._indices: dict[str, dict[str, set[Key]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._throttle = _Throttle()
        self._failures = 0
        #: Relist before the next watch; cleared by a successful list. Kept across
        #: stop()/start(), so a restarted informer resumes its watch from the last rv.
        self._need_list = True

    def __repr__(self) -> str:
        return f"<Informer {self.cluster}/{self.resource} items={len(self._cache)}>"

    # ------------------------------------------------------------------ registration

    def add_handler(self, fn: Handler) -> None:
        """Register an event handler; objects already cached are replayed to it as ADDED.

        The replay mirrors client-go, so a handler added late misses nothing.
        """
        self._handlers.append(fn)
        for obj in list(self._cache.values()):
            self._call(fn, "ADDED", obj, None)

    def add_reachability_handler(self, fn: Callable[[bool], None]) -> None:
        """Called with the new value each time `reachable` flips."""
        self._reach_handlers.append(fn)

    def add_index(self, name: str, fn: IndexFunc) -> None:
        """A secondary index: `fn(obj)` gives the values `by_index(name, value)` finds obj by."""
        self._index_fns[name] = fn
        self._indices[name] = {}
        for key, obj in self._cache.items():
            self._index_add(name, fn, key, obj)

    # ------------------------------------------------------------------ reading

    def get(self, namespace: str | None, name: str) -> JSON | None:
        """The cached object (shared: do not mutate it), or None."""
        return self._cache.get((namespace or "", name))

    def items(self) -> list[JSON]:
        """All cached objects (shared: do not mutate them)."""
        return list(self._cache.values())

    def keys(self) -> list[Key]:
        return list(self._cache)

    def by_index(self, name: str, value: str) -> list[JSON]:
        """Objects whose index function `name` yielded `value`; KeyError for an unknown index."""
        keys = self._indices[name].get(value, ())
        return [self._cache[k] for k in keys if k in self._cache]

    def __len__(self) -> int:
        return len(self._cache)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> asyncio.Task[None]:
        """Run in a background task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self.run(), name=f"informer:{self.cluster}/{self.resource}"
            )
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """List, then watch, forever; recovers from every error."""
        gone_streak = 0
        while True:
            try:
                if self._need_list:
                    await self._relist()
                got_events, started = await self._watch_once()
                gone_streak = 0
                # Clean end of stream: re-watch from the last rv; an abnormally early,
                # empty end is backed off so a misbehaving server cannot make us spin.
                if got_events:
                    self._failures = 0
                elif time.monotonic() - started < min(_QUICK_END, self.watch_timeout / 2):
                    await self._sleep_backoff()
            except asyncio.CancelledError:
                raise
            except errors.Gone as exc:
                gone_streak += 1
                self._note("gone", logging.INFO, "watch expired (%s); relisting", exc)
                self._need_list = True
                if gone_streak > 1:  # relist did not help at once: do not spin
                    await self._sleep_backoff()
            except errors.Unreachable as exc:
                self._set_reachable(False, exc)
                self._need_list = True
                await self._sleep_backoff()
            except Exception as exc:  # noqa: BLE001 - the informer must survive anything
                self._note(
                    f"err:{type(exc).__name__}", logging.WARNING,
                    "list/watch failed, retrying: %s: %s", type(exc).__name__, exc,
                )
                self._need_list = True
                await self._sleep_backoff()

    # ------------------------------------------------------------------ internals

    async def _relist(self) -> None:
        """List and dispatch the difference against the cache; set synced the first time."""
        result = await self.client.list(
            self.resource, namespace=self.namespace, label_selector=self.label_selector
        )
        self._set_reachable(True)
        self._failures = 0
        fresh: dict[Key, JSON] = {}
        for obj in result.items:
            fresh[object_key(obj)] = self._transform(obj)
        n = 0
        for key, obj in fresh.items():
            old = self._cache.get(key)
            if old is None:
                self._store(key, obj, None)
                self._dispatch("ADDED", obj, None)
            elif _rv(old) != _rv(obj):
                self._store(key, obj, old)
                self._dispatch("MODIFIED", obj, old)
            n += 1
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        for key in [k for k in self._cache if k not in fresh]:
            old = self._cache.get(key)
            if old is None:  # removed while we yielded
                continue
            self._remove(key, old)
            self._dispatch("DELETED", old, old)
            n += 1
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        self.resource_version = result.resource_version
        self._need_list = False
        self.list_count += 1
        self.synced.set()

    async def _watch_once(self) -> tuple[bool, float]:
        """One watch stream until it ends; returns (any events seen, start time)."""
        started = time.monotonic()
        got = False
        stream = self.client.watch(
            self.resource,
            namespace=self.namespace,
            label_selector=self.label_selector,
            resource_version=self.resource_version,
            timeout_seconds=self.watch_timeout,
        )
        try:
            async for event in stream:
                got = True
                self._apply(event.type, event.object)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        return got, started

    def _apply(self, etype: str, obj: JSON) -> None:
        """Apply one watch event to the cache and dispatch it."""
        rv = _rv(obj)
        if rv:
            self.resource_version = rv
        if etype == "BOOKMARK":
            return
        key = object_key(obj)
        old = self._cache.get(key)
        if etype == "DELETED":
            if old is None:  # never seen: handlers have nothing to forget
                return
            self._remove(key, old)
            self._dispatch("DELETED", obj, old)
        elif etype in ("ADDED", "MODIFIED"):
            if old is not None and (_newer(old, obj) or _rv(old) == rv):
                # We already hold this or a later version: our own write, remembered.
                # Its echo needs no handler run (the writer has just reconciled it).
                return
            obj = self._transform(obj)
            # Like client-go: ADDED vs MODIFIED follows the cache, not the wire.
            self._store(key, obj, old)
            self._dispatch("MODIFIED" if old is not None else "ADDED", obj, old)
        else:
            self._note(f"etype:{etype}", logging.WARNING, "ignoring watch event type %r", etype)

    def remember(self, obj: JSON) -> None:
        """Our own write's result, into the cache before its watch event arrives.

        Like client-go's mutation cache: the next reconcile compares against what we wrote,
        not against a version we already replaced (which would cost a 409 and a retry).
        No handlers run; the watch event still comes and dispatches as usual.
        """
        key = object_key(obj)
        old = self._cache.get(key)
        if old is None or not _newer(old, obj):
            self._store(key, self._transform(obj), old)

    def forget_object(self, obj: JSON) -> None:
        """Our own delete: drop it from the cache now (its DELETED event then finds nothing)."""
        key = object_key(obj)
        old = self._cache.get(key)
        if old is not None:
            self._remove(key, old)

    def _store(self, key: Key, obj: JSON, old: JSON | None) -> None:
        if old is not None:
            self._unindex(key, old)
        self._cache[key] = obj
        for name, fn in self._index_fns.items():
            self._index_add(name, fn, key, obj)

    def _remove(self, key: Key, old: JSON) -> None:
        self._unindex(key, old)
        self._cache.pop(key, None)

    def _index_values(self, name: str, fn: IndexFunc, obj: JSON) -> list[str]:
        try:
            return list(fn(obj))
        except Exception as exc:  # noqa: BLE001 - a bad index function must not kill us
            self._note(f"index:{name}", logging.ERROR, "index %r failed: %r", name, exc)
            return []

    def _index_add(self, name: str, fn: IndexFunc, key: Key, obj: JSON) -> None:
        index = self._indices[name]
        for value in self._index_values(name, fn, obj):
            index.setdefault(value, set()).add(key)

    def _unindex(self, key: Key, old: JSON) -> None:
        for name, fn in self._index_fns.items():
            index = self._indices[name]
            for value in self._index_values(name, fn, old):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]

    def _dispatch(self, etype: str, obj: JSON, old: JSON | None) -> None:
        for fn in list(self._handlers):
            self._call(fn, etype, obj, old)

    def _call(self, fn: Handler, etype: str, obj: JSON, old: JSON | None) -> None:
        try:
            fn(etype, obj, old)
        except Exception:  # noqa: BLE001 - a handler bug must not kill the informer
            name = getattr(fn, "__qualname__", repr(fn))
            dropped = self._throttle.allow(f"handler:{name}")
            if dropped is not None:
                self.log.exception(
                    "cluster %s %s: handler %s failed on %s %s/%s%s",
                    self.cluster, self.resource, name, etype, *object_key(obj),
                    f" ({dropped} similar suppressed)" if dropped else "",
                )

    def _set_reachable(self, flag: bool, exc: Exception | None = None) -> None:
        if flag == self.reachable:
            if not flag:
                self.log.debug("cluster %s %s still unreachable: %s", self.cluster, self.resource, exc)
            return
        self.reachable = flag
        if flag:
            down = time.monotonic() - (self.unreachable_since or time.monotonic())
            self.unreachable_since = None
            self.log.info("cluster %s %s reachable again after %.1fs", self.cluster, self.resource, down)
        else:
            self.unreachable_since = time.monotonic()
            self.log.warning(
                "cluster %s %s unreachable (cache kept): %s", self.cluster, self.resource, exc
            )
        for fn in list(self._reach_handlers):
            try:
                fn(flag)
            except Exception:  # noqa: BLE001
                self.log.exception("reachability handler failed")

    async def _sleep_backoff(self) -> None:
        """Capped exponential backoff with 'equal jitter' (half fixed, half random)."""
        delay = min(self.backoff_max, self.backoff_initial * (2 ** min(self._failures, 30)))
        self._failures += 1
        await asyncio.sleep(delay / 2 + random.random() * delay / 2)

    def _note(self, key: str, level: int, msg: str, *args: object) -> None:
        """Log through the throttle (bounded noise during long outages)."""
        dropped = self._throttle.allow(key)
        if dropped is None:
            self.log.debug(msg, *args)
            return
        suffix = f" ({dropped} similar suppressed)" if dropped else ""
        self.log.log(level, f"cluster %s %s: {msg}{suffix}", self.cluster, self.resource, *args)
