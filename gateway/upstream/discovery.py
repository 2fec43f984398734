"""Endpoint discovery: Services + EndpointSlices (+ Pods for labels) of every member cluster.

One informer per resource per member cluster; nothing here talks to an API server after the
first list. Informer events mark the affected Services dirty and a flush, coalesced to the
next event-loop turn, tells the owner which Services to re-resolve (item 15: well under 1 s).

Resolution of one Service port in one cluster (what kube-proxy does):
BackendRef.port (number or name) -> that cluster's Service spec.ports entry -> its name ->
the EndpointSlice port with that name (and protocol) -> the endpoint port; a Service with a
single unnamed port matches a slice's only port. Slices our MCS controller wrote
(`amcs.dev/managed-by=mcs-controller`) are skipped: they mirror other clusters' endpoints,
which we already read at their source. A cluster without the Service contributes nothing.

Endpoint objects are interned by (cluster, ip, port): the same pod address is the same
object across updates and across backends, so health and outlier state survive changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from gateway.types import CLUSTER_LABEL, Endpoint
from mcs_controller.access.api import JSON, ClusterClient
from mcs_controller.access.informer import Informer
from mcs_controller.access.resources import ENDPOINT_SLICES, PODS, SERVICES
from mcs_controller.model import labels as L

log = logging.getLogger("gateway.upstream.discovery")

ServiceKey = tuple[str, str]  # (namespace, service name)
EpKey = tuple[str, str, int]  # (cluster, ip, port)


def _slice_service(obj: JSON) -> list[str]:
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(L.LABEL_SERVICE_NAME)
    return [f"{meta.get('namespace', '')}/{name}"] if name else []


def _slice_pods(obj: JSON) -> list[str]:
    ns = (obj.get("metadata") or {}).get("namespace", "")
    out = []
    for ep in obj.get("endpoints") or []:
        ref = ep.get("targetRef") or {}
        if ref.get("kind", "Pod") == "Pod" and ref.get("name"):
            out.append(f"{ref.get('namespace') or ns}/{ref['name']}")
    return out


def _service_port(service: JSON, port: int | str) -> JSON | None:
    ports = (service.get("spec") or {}).get("ports") or []
    for sp in ports:
        if isinstance(port, int):
            if sp.get("port") == port:
                return sp
        elif (sp.get("name") or "") == port or (port.isdigit() and sp.get("port") == int(port)):
            return sp
    return None


def _slice_port(slice_: JSON, name: str, proto: str, single: bool) -> int | None:
    ports = slice_.get("ports") or []
    for p in ports:
        if (p.get("name") or "") == name and (p.get("protocol") or "TCP") == proto:
            return p.get("port")
    if single and len(ports) == 1 and not ports[0].get("name"):
        return ports[0].get("port")
    return None


def endpoint_ready(ep: JSON) -> bool:
    """Ready unset counts as ready (API docs); terminating endpoints never take new traffic."""
    cond = ep.get("conditions") or {}
    return cond.get("ready") is not False and cond.get("terminating") is not True


class _Member:
    """One member cluster's informers."""

    def __init__(self, client: ClusterClient, watch_pods: bool, namespace: str | None,
                 backoff_max: float) -> None:
        self.name = client.name
        self.services = Informer(client, SERVICES, namespace=namespace, backoff_max=backoff_max)
        self.slices = Informer(client, ENDPOINT_SLICES, namespace=namespace, backoff_max=backoff_max)
        self.pods = (Informer(client, PODS, namespace=namespace, backoff_max=backoff_max)
                     if watch_pods else None)
        self.slices.add_index("service", _slice_service)
        self.slices.add_index("pod", _slice_pods)

    @property
    def informers(self) -> list[Informer]:
        return [i for i in (self.services, self.slices, self.pods) if i is not None]


class EndpointCatalog:
    """Every member cluster's endpoints, resolvable per (namespace, service, port)."""

    def __init__(
        self,
        clients: Mapping[str, ClusterClient],
        *,
        watch_pods: bool = True,
        namespace: str | None = None,
        on_change: Callable[[set[ServiceKey]], None] | None = None,
        backoff_max: float = 5.0,
    ) -> None:
        self.members: dict[str, _Member] = {}
        for name, client in clients.items():
            m = _Member(client, watch_pods, namespace, backoff_max)
            m.name = name
            self.members[name] = m
            m.services.add_handler(self._on_service)
            m.slices.add_handler(self._on_slice)
            if m.pods is not None:
                m.pods.add_handler(self._make_pod_handler(m))
        self.on_change = on_change
        self._pool: dict[EpKey, Endpoint] = {}
        self._dirty: set[ServiceKey] = set()
        self._scheduled = False
        #: Flushes delivered (for tests and metrics).
        self.flushes = 0

    # -------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        for m in self.members.values():
            for inf in m.informers:
                inf.start()

    async def wait_synced(self, within: float | None = None) -> bool:
        """True once every informer has its first list (unreachable members never sync)."""
        waits = [inf.synced.wait() for m in self.members.values() for inf in m.informers]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), within)
        except TimeoutError:
            return False
        return True

    @property
    def synced(self) -> bool:
        return all(inf.synced.is_set() for m in self.members.values() for inf in m.informers)

    async def stop(self) -> None:
        for m in self.members.values():
            for inf in m.informers:
                await inf.stop()

    # -------------------------------------------------------------------- events

    def _mark(self, keys: Iterable[ServiceKey]) -> None:
        self._dirty.update(keys)
        if self._dirty and not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self._flush)
            except RuntimeError:  # no loop (sync use in tests): flush at once
                self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        if dirty and self.on_change is not None:
            self.flushes += 1
            try:
                self.on_change(dirty)
            except Exception:  # noqa: BLE001 - a rebuild bug must not stop discovery
                log.exception("endpoint change handler failed for %d services", len(dirty))

    def _on_service(self, _t: str, obj: JSON, _old: JSON | None) -> None:
        meta = obj.get("metadata") or {}
        self._mark([(meta.get("namespace", ""), meta.get("name", ""))])

    def _on_slice(self, _t: str, obj: JSON, old: JSON | None) -> None:
        keys = []
        for o in (obj, old):
            for value in _slice_service(o) if o else ():
                ns, _, name = value.partition("/")
                keys.append((ns, name))
        self._mark(keys)

    def _make_pod_handler(self, m: _Member) -> Callable[[str, JSON, JSON | None], None]:
        def on_pod(etype: str, obj: JSON, old: JSON | None) -> None:
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if old is not None and etype != "DELETED":
                if ((old.get("metadata") or {}).get("labels") or {}) == labels:
                    return  # status-only change: endpoints' labels are unaffected
            meta = obj.get("metadata") or {}
            keys = []
            for s in m.slices.by_index("pod", f"{meta.get('namespace', '')}/{meta.get('name', '')}"):
                for value in _slice_service(s):
                    ns, _, name = value.partition("/")
                    keys.append((ns, name))
            self._mark(keys)
        return on_pod

    # -------------------------------------------------------------------- resolution

    def resolve(self, namespace: str, service: str, port: int | str) -> list[Endpoint]:
        """All endpoints (ready or not) of one Service port across member clusters.

        Returned Endpoint objects are interned: `ready` and `labels` are refreshed in place.
        """
        out: list[Endpoint] = []
        seen: set[EpKey] = set()
        for cluster, m in self.members.items():
            svc = m.services.get(namespace, service)
            if svc is None:
                continue
            sp = _service_port(svc, port)
            if sp is None:
                continue
            name, proto = sp.get("name") or "", sp.get("protocol") or "TCP"
            single = len((svc.get("spec") or {}).get("ports") or []) == 1
            slices = sorted(m.slices.by_index("service", f"{namespace}/{service}"),
                            key=lambda s: s["metadata"].get("name", ""))
            found: dict[EpKey, tuple[bool, JSON | None]] = {}
            for s in slices:
                if L.is_ours(s) or s.get("addressType") == "FQDN":
                    continue
                number = _slice_port(s, name, proto, single)
                if not isinstance(number, int):
                    continue
                for ep in s.get("endpoints") or []:
                    addresses = ep.get("addresses") or []
                    if not addresses:
                        continue
                    key = (cluster, addresses[0], number)
                    ready = endpoint_ready(ep)
                    prev = found.get(key)
                    if prev is None or (ready and not prev[0]):  # a duplicate: ready wins
                        found[key] = (ready, ep.get("targetRef"))
            for key, (ready, ref) in found.items():
                if key in seen:
                    continue
                seen.add(key)
                out.append(self._intern(key, ready, self._labels(m, namespace, ref)))
        return out

    def _labels(self, m: _Member, namespace: str, ref: JSON | None) -> dict[str, str]:
        labels: dict[str, str] = {}
        if m.pods is not None and ref and ref.get("kind", "Pod") == "Pod" and ref.get("name"):
            pod = m.pods.get(ref.get("namespace") or namespace, ref["name"])
            if pod is not None:
                labels.update((pod.get("metadata") or {}).get("labels") or {})
        labels[CLUSTER_LABEL] = m.name
        return labels

    def _intern(self, key: EpKey, ready: bool, labels: dict[str, str]) -> Endpoint:
        ep = self._pool.get(key)
        if ep is None:
            ep = Endpoint(cluster=key[0], ip=key[1], port=key[2], labels=labels, ready=ready)
            self._pool[key] = ep
            return ep
        ep.ready = ready
        if ep.labels != labels:
            ep.labels = labels
        return ep

    def release(self, ep: Endpoint) -> None:
        """Forget an interned endpoint (no Service port the gateway uses holds it now): a pod
        that comes back later gets a new Endpoint, with no health or outlier past."""
        key = (ep.cluster, ep.ip, ep.port)
        if self._pool.get(key) is ep:
            del self._pool[key]

    def interned(self, cluster: str, ip: str, port: int) -> Endpoint | None:
        return self._pool.get((cluster, ip, port))
