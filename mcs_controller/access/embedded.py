"""An in-process cluster with the API server's semantics, where our code depends on them.

resourceVersion (one counter per cluster), watches resumable from a resourceVersion with
`Gone` once it is compacted away, label selectors (also on watches: an object that stops
matching is DELETED for that watcher), generateName, ClusterIP allocation, 409 on a stale
write, the status subresource, ownerReference garbage collection, and namespaces that must
exist. `set_reachable(False)` makes it behave like a cluster behind a broken network.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from mcs_controller.access import selectors, validation
from mcs_controller.access.api import JSON, ClusterClient, ObjectList, PatchType, WatchEvent
from mcs_controller.access.errors import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    Unreachable,
)
from mcs_controller.access.ipalloc import ClusterIPAllocator
from mcs_controller.access.patching import json_patch, merge_patch
from mcs_controller.access.resources import (
    INGRESSES,
    MULTI_CLUSTER_SERVICES,
    NAMESPACES,
    PODS,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
    Resource,
)
from mcs_controller.model.timestamps import rfc3339

#: Resources whose status is written only through the `/status` subresource.
_STATUS_SUBRESOURCE = {
    r.key for r in (NAMESPACES, SERVICES, PODS, INGRESSES, SERVICE_EXPORTS, SERVICE_IMPORTS,
                    MULTI_CLUSTER_SERVICES)
}
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the API server's generateName draws from
_INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

ObjKey = tuple[str, str]  # (namespace or "", name)


@dataclass
class _Event:
    rv: int
    res_key: tuple[str, str]
    type: str
    obj: JSON
    old: JSON | None


class _Watcher:
    def __init__(self, res: Resource, namespace: str | None, label_selector: str | None):
        self.res = res
        self.namespace = namespace
        self.match = selectors.parse(label_selector)
        self.queue: asyncio.Queue[tuple[str, JSON] | BaseException] = asyncio.Queue()

    def offer(self, event: _Event) -> None:
        if event.res_key != self.res.key:
            return
        if self.namespace and event.obj["metadata"].get("namespace") != self.namespace:
            return
        now = self.match(event.obj["metadata"].get("labels") or {})
        before = event.old is not None and self.match(event.old["metadata"].get("labels") or {})
        if event.type == "MODIFIED":
            kind = "MODIFIED" if now and before else "ADDED" if now else "DELETED" if before else ""
        else:
            kind = event.type if now else ""
        if kind:
            self.queue.put_nowait((kind, event.obj))


class EmbeddedCluster(ClusterClient):
    """One simulated cluster: a store of JSON objects with API-server behaviour."""

    def __init__(
        self,
        name: str,
        service_cidr: str = "10.96.0.0/16",
        history: int = 10000,
        bookmark_interval: float = 30.0,
    ):
        self.name = name
        self.bookmark_interval = bookmark_interval
        #: Source of creationTimestamp; tests may replace it.
        self.clock: Callable[[], float] = time.time
        self._objects: dict[tuple[str, str], dict[ObjKey, JSON]] = {}
        self._rv = 0
        self._history: deque[_Event] = deque(maxlen=max(1, history))
        self._compacted_rv = 0
        self._watchers: set[_Watcher] = set()
        self._reachable = True
        self._ips = ClusterIPAllocator(service_cidr)
        for ns in _INITIAL_NAMESPACES:
            self._store(NAMESPACES, {"metadata": {"name": ns}, "status": {"phase": "Active"}}, "ADDED")

    # -- reachability ----------------------------------------------------------------------

    @property
    def reachable(self) -> bool:
        return self._reachable

    def set_reachable(self, flag: bool) -> None:
        """False: every call fails with Unreachable and open watches break, as on a network cut."""
        self._reachable = flag
        if not flag:
            for watcher in list(self._watchers):
                watcher.queue.put_nowait(Unreachable(f"cluster {self.name} is unreachable"))

    def _check(self) -> None:
        if not self._reachable:
            raise Unreachable(f"cluster {self.name} is unreachable")

    # -- reads -----------------------------------------------------------------------------

    def _bucket(self, res: Resource) -> dict[ObjKey, JSON]:
        return self._objects.setdefault(res.key, {})

    @staticmethod
    def _serve(res: Resource, obj: JSON) -> JSON:
        """The object as served at `res`'s version: the caller's own copy, as over the wire."""
        out = copy.deepcopy(obj)
        out["apiVersion"] = res.api_version
        out["kind"] = res.kind
        return out

    @staticmethod
    def _share(res: Resource, obj: JSON) -> JSON:
        """A watch event's object, shared by every watcher (nested parts are not copied).

        Stored objects are never changed in place (every write stores a new object), and
        watch events feed informer caches, which are read-only by contract; copying each
        event once per watcher was most of a large fleet's CPU time.
        """
        out = dict(obj)
        out["apiVersion"] = res.api_version
        out["kind"] = res.kind
        return out

    async def list(
        self, res: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> ObjectList:
        self._check()
        match = selectors.parse(label_selector)
        items = [
            self._serve(res, obj)
            for (ns, _), obj in sorted(self._bucket(res).items())
            if (namespace is None or ns == namespace) and match(obj["metadata"].get("labels") or {})
        ]
        return ObjectList(items=items, resource_version=str(self._rv))

    async def get(self, res: Resource, namespace: str | None, name: str) -> JSON:
        self._check()
        return self._serve(res, self._existing(res, namespace, name))

    def _existing(self, res: Resource, namespace: str | None, name: str) -> JSON:
        obj = self._bucket(res).get(((namespace or "") if res.namespaced else "", name))
        if obj is None:
            raise NotFound(f'{res} "{name}" not found')
        return obj

    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: float | None = None,
    ) -> AsyncIterator[WatchEvent]:
        self._check()
        watcher = _Watcher(res, namespace, label_selector)
        # Registering and replaying happen with no await between: no event can slip past.
        if resource_version in (None, "", "0"):
            for key, obj in sorted(self._bucket(res).items()):
                if namespace is None or key[0] == namespace:
                    watcher.offer(_Event(self._rv, res.key, "ADDED", obj, None))
        else:
            start = int(resource_version)
            if start < self._compacted_rv:
                raise Gone(f"too old resource version: {start} ({self._compacted_rv})")
            for event in self._history:
                if event.rv > start:
                    watcher.offer(event)
        self._watchers.add(watcher)
        try:
            async for event in self._stream(res, watcher, timeout_seconds):
                yield event
        finally:
            self._watchers.discard(watcher)

    async def _stream(
        self, res: Resource, watcher: _Watcher, timeout_seconds: float | None
    ) -> AsyncIterator[WatchEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds if timeout_seconds else None
        while True:
            wait = self.bookmark_interval or None
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                wait = min(wait, remaining) if wait else remaining
            try:
                item = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    return
                bookmark = {"metadata": {"resourceVersion": str(self._rv)}}
                yield WatchEvent("BOOKMARK", self._share(res, bookmark))
                continue
            if isinstance(item, BaseException):
                raise item
            yield WatchEvent(item[0], self._share(res, item[1]))  # type: ignore[arg-type]

    # -- writes ----------------------------------------------------------------------------

    def _emit(self, res: Resource, type_: str, obj: JSON, old: JSON | None) -> None:
        event = _Event(self._rv, res.key, type_, obj, old)
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        self._history.append(event)
        for watcher in self._watchers:
            watcher.offer(event)

    def _store(self, res: Resource, obj: JSON, type_: str, old: JSON | None = None) -> JSON:
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        if type_ == "ADDED":
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = rfc3339(self.clock())
            meta["generation"] = 1
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        self._bucket(res)[(meta.get("namespace", ""), meta["name"])] = obj
        self._emit(res, type_, obj, old)
        return obj

    def _validate(self, res: Resource, obj: JSON) -> None:
        problems = validation.problems(res, obj)
        if problems:
            name = (obj.get("metadata") or {}).get("name", "") if isinstance(obj, dict) else ""
            raise Invalid(f'{res.kind} "{name}" is invalid: ' + "; ".join(problems))

    async def create(self, res: Resource, obj: JSON) -> JSON:
        self._check()
        self._validate(res, obj)
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        for field in ("uid", "resourceVersion", "creationTimestamp", "generation",
                      "deletionTimestamp"):
            meta.pop(field, None)
        if res.namespaced:
            ns = meta.setdefault("namespace", "default")
            if ("", ns) not in self._bucket(NAMESPACES):
                raise NotFound(f'namespaces "{ns}" not found')
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            suffix = "".join(random.choices(_NAME_CHARS, k=5))
            meta["name"] = meta["generateName"] + suffix
        key = (meta.get("namespace", ""), meta["name"])
        if key in self._bucket(res):
            raise AlreadyExists(f'{res} "{meta["name"]}" already exists')
        if res.key == SERVICES.key:
            self._ips.assign(obj)
        if res.key == NAMESPACES.key:
            obj.setdefault("status", {})["phase"] = "Active"
        return self._serve(res, self._store(res, obj, "ADDED"))

    async def replace(self, res: Resource, obj: JSON, subresource: str | None = None) -> JSON:
        self._check()
        meta = obj.get("metadata") or {}
        current = self._existing(res, meta.get("namespace"), meta.get("name", ""))
        return self._serve(res, self._update(res, current, obj, subresource))

    def _update(self, res: Resource, current: JSON, obj: JSON, subresource: str | None) -> JSON:
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        name = current["metadata"]["name"]
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {res} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again"
            )
        if subresource == "status":
            new = copy.deepcopy(current)
            new["status"] = copy.deepcopy(obj.get("status"))
            if new["status"] is None:
                new.pop("status")
        else:
            self._validate(res, obj)
            new = copy.deepcopy(obj)
            for field in ("uid", "creationTimestamp", "generation", "name", "namespace"):
                if field in current["metadata"]:
                    new["metadata"][field] = current["metadata"][field]
                else:
                    new["metadata"].pop(field, None)
            if res.key in _STATUS_SUBRESOURCE:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            if res.key == SERVICES.key:
                self._ips.keep(current, new)
            if _spec_of(new) != _spec_of(current):
                new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        if _without_rv(new) == _without_rv(current):
            return current  # a no-op write does not bump the resourceVersion
        return self._store(res, new, "MODIFIED", current)

    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
    ) -> JSON:
        self._check()
        current = self._existing(res, namespace, name)
        if patch_type == "merge":
            new = merge_patch(current, patch)
        elif patch_type == "json":
            new = json_patch(current, patch)
        else:
            raise Invalid(f"unsupported patch type {patch_type!r}")
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise Invalid(f'{res.kind} "{name}": patch removed metadata')
        new["metadata"].setdefault("resourceVersion", current["metadata"]["resourceVersion"])
        return self._serve(res, self._update(res, current, new, subresource))

    async def delete(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        resource_version: str | None = None,
    ) -> None:
        self._check()
        current = self._existing(res, namespace, name)
        if resource_version and resource_version != current["metadata"]["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {res} "{name}": the object has been modified'
            )
        self._remove(res, current)

    def _remove(self, res: Resource, obj: JSON) -> None:
        meta = obj["metadata"]
        del self._bucket(res)[(meta.get("namespace", ""), meta["name"])]
        if res.key == SERVICES.key:
            self._ips.release(obj)
        gone = copy.deepcopy(obj)
        self._rv += 1
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(res, "DELETED", gone, None)
        if res.key == NAMESPACES.key:
            for res_key, bucket in self._objects.items():
                for key in [k for k in bucket if k[0] == meta["name"]]:
                    self._remove(_resource_for(res_key, bucket[key]), bucket[key])
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        """Delete objects all of whose owners are gone (background propagation)."""
        live = {o["metadata"]["uid"] for b in self._objects.values() for o in b.values()}
        for res_key, bucket in list(self._objects.items()):
            for obj in list(bucket.values()):
                owners = obj["metadata"].get("ownerReferences") or []
                if owners and not any(o.get("uid") in live for o in owners):
                    if (obj["metadata"].get("namespace", ""), obj["metadata"]["name"]) in bucket:
                        self._remove(_resource_for(res_key, obj), obj)
                        return  # _remove re-runs the collection with the new live set

    # -- introspection for tests and the simulator ------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def count(self, res: Resource) -> int:
        return len(self._bucket(res))


def _spec_of(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _without_rv(obj: JSON) -> JSON:
    meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


def _resource_for(res_key: tuple[str, str], obj: JSON) -> Resource:
    group, version = res_key[0], obj["apiVersion"].rpartition("/")[2]
    return Resource(group, version, res_key[1], obj["kind"], namespaced=bool(
        obj["metadata"].get("namespace")))
