"""What kube-controller-manager and the kubelet would do, for the embedded fleet.

`EndpointSliceSimulator` is the built-in EndpointSlice controller of one cluster: Services
with a selector get slices (managed-by `endpointslice-controller.k8s.io`, owned by the
Service) listing the matching Pods, so the MCS controller mirrors exactly what it would
mirror from a real cluster. `PodSimulator` (pods.py) plays the kubelet: simulated pods
answer HTTP on their loopback pod IPs. `FleetSimulator` runs both for every cluster.

Follows the upstream controller (pkg/controller/endpointslice): selector-less and
ExternalName Services are left alone (users or other controllers own their slices), one
placeholder slice with no endpoints when nothing matches, endpoints grouped by address
type and resolved ports, at most 100 per slice, writes only when something changed.
Not simulated: Node topology (`zone`), the `last-change-trigger-time` annotation, and
Endpoints objects.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from mcs_controller.access import selectors
from mcs_controller.access.api import JSON, ClusterClient
from mcs_controller.access.errors import Conflict, NotFound, Unreachable
from mcs_controller.access.informer import Informer
from mcs_controller.access.resources import ENDPOINT_SLICES, PODS, SERVICES
from mcs_controller.engine.workqueue import Requeue, WorkQueue
from mcs_controller.model import labels as L
from mcs_fleet.pods import PodSimulator, endpoint_ports, pod_address, pod_endpoint, pod_in_endpoints

log = logging.getLogger("mcs_fleet.sim")

LABEL_HEADLESS = "service.kubernetes.io/headless"
_RESERVED_LABELS = (L.LABEL_SERVICE_NAME, L.LABEL_MANAGED_BY)
_SLICE_FIELDS = ("addressType", "ports", "endpoints")
Key = tuple[str, str]
GroupKey = tuple[str, tuple]  # (addressType, ports key)


# ---------------------------------------------------------------------- pure: pod -> endpoint


def address_types(service: JSON) -> list[str]:
    """spec.ipFamilies; else the clusterIP's family; else (legacy headless) both."""
    spec = service.get("spec") or {}
    if spec.get("ipFamilies"):
        return list(spec["ipFamilies"])
    cluster_ip = spec.get("clusterIP")
    if cluster_ip and cluster_ip != "None":
        try:
            return ["IPv4" if ipaddress.ip_address(cluster_ip).version == 4 else "IPv6"]
        except ValueError:
            pass
    return ["IPv4", "IPv6"]


def ports_key(ports: list[JSON]) -> tuple:
    return tuple(sorted((p.get("name") or "", p.get("protocol") or "TCP", p.get("port") or 0,
                         p.get("appProtocol") or "") for p in ports))


def _ep_key(ep: JSON) -> str:
    ref = ep.get("targetRef") or {}
    return ref.get("name") or ",".join(ep.get("addresses") or [])


def desired_groups(service: JSON, pods: list[JSON]) -> dict[GroupKey, tuple[list[JSON], dict[str, JSON]]]:
    """(addressType, ports) -> (ports, {pod name: endpoint}) for the pods the Service selects."""
    groups: dict[GroupKey, tuple[list[JSON], dict[str, JSON]]] = {}
    for pod in pods:
        if not pod_in_endpoints(pod):
            continue
        ports = endpoint_ports(service, pod)
        for family in address_types(service):
            address = pod_address(pod, family)
            if address is None:
                continue
            group = groups.setdefault((family, ports_key(ports)), (ports, {}))
            group[1][pod["metadata"]["name"]] = pod_endpoint(pod, service, address)
    return groups


# ---------------------------------------------------------------------- pure: slices


def slice_labels(service: JSON) -> dict[str, str]:
    """The Service's labels (minus reserved keys), headless marker, service-name, managed-by."""
    meta, spec = service["metadata"], service.get("spec") or {}
    out = {k: v for k, v in (meta.get("labels") or {}).items() if k not in _RESERVED_LABELS}
    if spec.get("clusterIP") == "None":
        out[LABEL_HEADLESS] = ""
    else:
        out.pop(LABEL_HEADLESS, None)
    out[L.LABEL_SERVICE_NAME] = meta["name"]
    out[L.LABEL_MANAGED_BY] = L.BUILTIN_SLICE_CONTROLLER
    return out


def controller_ref(service: JSON) -> JSON:
    meta = service["metadata"]
    return {"apiVersion": "v1", "kind": "Service", "name": meta["name"], "uid": meta.get("uid", ""),
            "controller": True, "blockOwnerDeletion": True}


def owned_by(slice_: JSON, service: JSON) -> bool:
    uid = service["metadata"].get("uid")
    return any(ref.get("uid") == uid for ref in slice_["metadata"].get("ownerReferences") or [])


def new_slice(service: JSON, family: str, ports: list[JSON], endpoints: list[JSON]) -> JSON:
    meta = service["metadata"]
    return {
        "apiVersion": ENDPOINT_SLICES.api_version, "kind": ENDPOINT_SLICES.kind,
        "metadata": {"generateName": f"{meta['name']}-", "namespace": meta.get("namespace", "default"),
                     "labels": slice_labels(service), "ownerReferences": [controller_ref(service)]},
        "addressType": family, "ports": copy.deepcopy(ports),
        "endpoints": sorted(endpoints, key=_ep_key),
    }


def _same(current: JSON, want: JSON) -> bool:
    if any((current.get(k) or None) != (want.get(k) or None) for k in _SLICE_FIELDS):
        return False
    cm, wm = current["metadata"], want["metadata"]
    return (cm.get("labels") or {}) == wm["labels"] and (
        (cm.get("ownerReferences") or []) == wm["ownerReferences"])


def plan_slices(
    service: JSON, pods: list[JSON], existing: list[JSON], max_per_slice: int = L.MAX_ENDPOINTS_PER_SLICE
) -> tuple[list[JSON], list[JSON], list[JSON]]:
    """(to create, to update, to delete) so `existing` becomes the Service's slices.

    Keeps endpoints in the slice that already holds them, fills free room before creating,
    drops slices not owned by this Service (a deleted and re-created namesake's).
    """
    groups = desired_groups(service, pods)
    creates: list[JSON] = []
    deletes: list[JSON] = []
    kept: list[tuple[JSON, GroupKey, list[JSON]]] = []
    placed: dict[GroupKey, set[str]] = {}
    for s in sorted(existing, key=lambda s: s["metadata"]["name"]):
        key = (s.get("addressType", ""), ports_key(s.get("ports") or []))
        if not owned_by(s, service) or key not in groups:
            deletes.append(s)
            continue
        want, taken, eps = groups[key][1], placed.setdefault(key, set()), []
        for ep in s.get("endpoints") or []:
            k = _ep_key(ep)
            if k in want and k not in taken and len(eps) < max_per_slice:
                eps.append(want[k])
                taken.add(k)
        kept.append((s, key, eps))
    for key, (ports, want) in sorted(groups.items()):
        rest = [want[k] for k in sorted(want) if k not in placed.get(key, set())]
        for _, k, eps in kept:
            if k == key and rest:
                room = max(0, max_per_slice - len(eps))
                eps.extend(rest[:room])
                rest = rest[room:]
        for i in range(0, len(rest), max_per_slice):
            creates.append(new_slice(service, key[0], ports, rest[i:i + max_per_slice]))
    updates: list[JSON] = []
    for s, key, eps in kept:
        if not eps:
            deletes.append(s)
            continue
        want_slice = new_slice(service, key[0], groups[key][0], eps)
        if not _same(s, want_slice):
            updates.append(_updated(s, want_slice))
    if not creates and not any(eps for _, _, eps in kept):
        # Nothing selected: one placeholder slice (no ports, no endpoints), as upstream.
        creates.append(new_slice(service, address_types(service)[0], [], []))
    # A create plus a delete of the same address type is one update, as upstream; a slice
    # already equal to the one to create goes first (an existing placeholder stays as is).
    deletes.sort(key=lambda d: not (creates and _same(d, creates[-1])))
    for target in list(deletes):
        if creates and owned_by(target, service) and target.get("addressType") == creates[-1]["addressType"]:
            created = creates.pop()
            deletes.remove(target)
            if not _same(target, created):
                updates.append(_updated(target, created))
    return creates, updates, deletes


def _updated(current: JSON, want: JSON) -> JSON:
    out = copy.deepcopy(current)
    for field in _SLICE_FIELDS:
        out[field] = copy.deepcopy(want[field])
    out["metadata"]["labels"] = dict(want["metadata"]["labels"])
    out["metadata"]["ownerReferences"] = copy.deepcopy(want["metadata"]["ownerReferences"])
    return out


# ---------------------------------------------------------------------- the controller


def _ns_index(obj: JSON) -> list[str]:
    return [obj["metadata"].get("namespace", "")]


def _service_index(obj: JSON) -> list[str]:
    meta = obj["metadata"]
    name = (meta.get("labels") or {}).get(L.LABEL_SERVICE_NAME)
    return [f"{meta.get('namespace', '')}/{name}"] if name else []


class EndpointSliceSimulator:
    """The built-in EndpointSlice controller for one cluster (kube-controller-manager's)."""

    def __init__(self, cluster: ClusterClient, *, workers: int = 2, max_retry_delay: float = 2.0,
                 batch_period: float = 0.02, slice_change_delay: float = 1.0):
        self.cluster = cluster
        self.workers = workers
        #: Pod changes wait this long so a burst costs one write (upstream's
        #: --endpointslice-updates-batch-period); Service changes apply at once.
        self.batch_period = batch_period
        #: Someone else changed one of our slices: resync after this (upstream: 1s).
        self.slice_change_delay = slice_change_delay
        self.services = Informer(cluster, SERVICES, backoff_max=2.0)
        self.pods = Informer(cluster, PODS, backoff_max=2.0)
        self.slices = Informer(cluster, ENDPOINT_SLICES, backoff_max=2.0,
                               label_selector=f"{L.LABEL_MANAGED_BY}={L.BUILTIN_SLICE_CONTROLLER}")
        self.queue: WorkQueue[Key] = WorkQueue(f"endpointslice:{cluster.name}", max_delay=max_retry_delay)
        #: (verb) -> count of writes made; compare-then-write keeps it still when nothing changes.
        self.writes: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        #: Delayed adds: ("pods" | "slices", service key) -> timer. Pod batches count as busy.
        self._timers: dict[tuple[str, Key], asyncio.TimerHandle] = {}
        #: resourceVersion of each slice as we last wrote it: its watch event is no news.
        self._own: dict[Key, str] = {}

    async def start(self) -> None:
        """Start the informers and workers; returns once the caches are filled."""
        self.services.add_index("ns", _ns_index)
        self.pods.add_index("ns", _ns_index)
        self.slices.add_index("service", _service_index)
        self.services.add_handler(lambda _t, obj, _old: self.queue.add(_key(obj)))
        self.pods.add_handler(self._on_pod)
        self.slices.add_handler(self._on_slice)
        for informer in (self.services, self.pods, self.slices):
            informer.start()
        await asyncio.gather(self.services.synced.wait(), self.pods.synced.wait(),
                             self.slices.synced.wait())
        self._task = asyncio.create_task(self.queue.run_workers(self.sync, self.workers),
                                         name=f"endpointslice:{self.cluster.name}")

    async def stop(self) -> None:
        self.queue.shutdown()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for informer in (self.services, self.pods, self.slices):
            await informer.stop()

    async def wait_idle(self, within: float = 5.0) -> bool:
        """True once nothing is queued or in progress (after the caches filled)."""
        deadline = time.monotonic() + within
        quiet = 0
        while time.monotonic() < deadline:
            busy = (len(self.queue) or self.queue.in_progress or not self.pods.synced.is_set()
                    or any(kind == "pods" for kind, _ in self._timers))
            quiet = 0 if busy else quiet + 1
            if quiet >= 3:
                return True
            await asyncio.sleep(0.01)
        return False

    # -- events ---------------------------------------------------------------------------

    def _on_pod(self, _type: str, pod: JSON, old: JSON | None) -> None:
        """Queue every Service in the pod's namespace that selects it now or selected it."""
        labels = pod["metadata"].get("labels") or {}
        old_labels = (old or {}).get("metadata", {}).get("labels") or {}
        for svc in self.services.by_index("ns", pod["metadata"].get("namespace", "")):
            selector = (svc.get("spec") or {}).get("selector")
            if selectors.matches(selector, labels) or (old and selectors.matches(selector, old_labels)):
                self._add_after("pods", _key(svc), self.batch_period)

    def _on_slice(self, _type: str, slice_: JSON, _old: JSON | None) -> None:
        """A slice changed: our own write's echo is ignored, anything else resyncs later."""
        meta = slice_["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if self._own.pop(key, None) == meta.get("resourceVersion"):
            return
        name = (meta.get("labels") or {}).get(L.LABEL_SERVICE_NAME)
        if name:
            self._add_after("slices", (key[0], name), self.slice_change_delay)

    def _add_after(self, kind: str, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        if (kind, key) not in self._timers:
            self._timers[(kind, key)] = loop.call_later(delay, self._release, kind, key)

    def _release(self, kind: str, key: Key) -> None:
        self._timers.pop((kind, key), None)
        self.queue.add(key)

    # -- reconcile ------------------------------------------------------------------------

    async def sync(self, key: Key) -> None:
        """Make the Service's slices match its pods; a failed write retries with backoff."""
        ns, name = key
        existing = self.slices.by_index("service", f"{ns}/{name}")
        service = self.services.get(ns, name)
        try:
            if service is None:  # deleted: its slices go (GC may have been first)
                for s in existing:
                    await self._delete(s)
                return
            spec = service.get("spec") or {}
            if spec.get("type") == "ExternalName" or not spec.get("selector"):
                return  # upstream leaves these alone: their slices are someone else's
            pods = [p for p in self.pods.by_index("ns", ns)
                    if selectors.matches(spec["selector"], p["metadata"].get("labels"))]
            creates, updates, deletes = plan_slices(service, pods, existing)
            for s in deletes:  # deletes first: frees names and room, as upstream
                await self._delete(s)
            for s in updates:
                self._wrote(await self.cluster.replace(ENDPOINT_SLICES, s), "update")
            for s in creates:
                self._wrote(await self.cluster.create(ENDPOINT_SLICES, s), "create")
        except (Unreachable, Conflict) as exc:
            raise Requeue(f"{self.cluster.name} {ns}/{name}: {exc}") from exc
        except NotFound as exc:  # e.g. the namespace went away under us
            if service is not None:
                raise Requeue(f"{self.cluster.name} {ns}/{name}: {exc}") from exc

    def _wrote(self, written: JSON, verb: str) -> None:
        self.slices.remember(written)
        self._own[_key(written)] = written["metadata"]["resourceVersion"]
        self.writes[verb] += 1
        log.debug("cluster %s: %sd EndpointSlice %s/%s", self.cluster.name, verb, *_key(written))

    async def _delete(self, s: JSON) -> None:
        meta = s["metadata"]
        if (meta.get("labels") or {}).get(L.LABEL_MANAGED_BY) != L.BUILTIN_SLICE_CONTROLLER:
            return  # never touch a slice someone else manages
        try:
            await self.cluster.delete(ENDPOINT_SLICES, meta.get("namespace"), meta["name"])
            self.writes["delete"] += 1
        except NotFound:
            pass
        self.slices.forget_object(s)  # its DELETED event then finds nothing to dispatch
        self._own.pop(_key(s), None)


def _key(obj: JSON) -> Key:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


# ---------------------------------------------------------------------- the fleet


class FleetSimulator:
    """Both simulators for every cluster of a fleet (`Fleet` from the loader, or a name map)."""

    def __init__(self, fleet: Any, *, serve_pods: bool = True):
        clusters: Mapping[str, ClusterClient] = getattr(fleet, "clusters", fleet)
        self.clusters = dict(clusters)
        self.slices = {name: EndpointSliceSimulator(c) for name, c in self.clusters.items()}
        self.pods = ({name: PodSimulator(c) for name, c in self.clusters.items()}
                     if serve_pods else {})

    async def start(self, within: float = 5.0) -> None:
        """Start everything; returns once the initial slices are written and pods serve."""
        await asyncio.gather(*(s.start() for s in self.slices.values()),
                             *(p.start() for p in self.pods.values()))
        await self.wait_idle(within)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.slices.values()),
                             *(p.stop() for p in self.pods.values()), return_exceptions=True)

    async def wait_idle(self, within: float = 5.0) -> bool:
        results = await asyncio.gather(*(s.wait_idle(within) for s in self.slices.values()),
                                       *(p.wait_idle() for p in self.pods.values()))
        return all(r is not False for r in results)

    async def stop_pod(self, cluster: str, namespace: str, name: str) -> None:
        await self.pods[cluster].stop_pod(namespace, name)

    async def start_pod(self, cluster: str, namespace: str, name: str) -> None:
        await self.pods[cluster].start_pod(namespace, name)

    async def stop_cluster(self, cluster: str) -> None:
        await self.pods[cluster].stop_cluster()

    async def start_cluster(self, cluster: str) -> None:
        await self.pods[cluster].start_cluster()

