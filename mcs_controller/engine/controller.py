"""The MCS controller: one work item per Service name, reconciled across every member cluster.

Informers feed a deduplicating work queue; a reconcile computes the desired state with the
pure model and writes only what differs. Unreachable clusters keep their cached state; past
the grace period their endpoints are published as not ready.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time

from mcs_controller.access.api import JSON, ClusterClient
from mcs_controller.access.errors import ApiError, Conflict, Unreachable
from mcs_controller.access.informer import Informer
from mcs_controller.access.resources import (
    ENDPOINT_SLICES,
    MULTI_CLUSTER_SERVICES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
)
from mcs_controller.engine.members import MemberCluster
from mcs_controller.engine.workqueue import Requeue, WorkQueue
from mcs_controller.engine.writes import Writer, owner_reference
from mcs_controller.model import labels as L
from mcs_controller.model.conditions import Condition, merge_conditions
from mcs_controller.model.desired import (
    ClusterState,
    ServiceDesired,
    desired_service,
    import_object,
    shadow_object,
)
from mcs_controller.model.timestamps import rfc3339

log = logging.getLogger("mcs_controller")
Key = tuple[str, str]


class RetryLater(Requeue):
    """Some clusters could not be written; the key goes back on the queue with backoff."""


class Controller:
    def __init__(
        self,
        members: dict[str, ClusterClient],
        hub: ClusterClient | None = None,
        *,
        metrics: object | None = None,
        grace_period: float = 30.0,
        workers: int = 4,
        resync_period: float = 300.0,
    ):
        self.members = {name: MemberCluster(name, client) for name, client in members.items()}
        self.hub = hub
        self.mcs = Informer(hub, MULTI_CLUSTER_SERVICES) if hub is not None else None
        self.metrics = metrics
        self.grace_period = grace_period
        self.workers = workers
        self.resync_period = resync_period
        self.queue: WorkQueue[Key] = WorkQueue()
        self.writer = Writer(metrics)
        self._stale: set[str] = set()
        self._first_seen: dict[Key, float] = {}  # source change seen -> propagation latency
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle -----------------------------------------------------------------------

    async def start_informers(self) -> None:
        """Watch everything (standby replicas do this too, to take over warm)."""
        for m in self.members.values():
            await m.discover_identity()
            m.start(self._on_member_event)
        if self.mcs is not None:
            self.mcs.add_handler(lambda kind, obj, old: self._enqueue_obj(obj))
            self.mcs.start()

    @property
    def synced(self) -> bool:
        return all(m.synced for m in self.members.values()) and (
            self.mcs is None or self.mcs.synced.is_set()
        )

    async def wait_synced(self) -> None:
        informers = [i for m in self.members.values() for i in m.informers]
        if self.mcs is not None:
            informers.append(self.mcs)
        for informer in informers:
            await informer.synced.wait()

    async def run_workers(self) -> None:
        """Process the queue until cancelled (only the leader does this)."""
        await self.wait_synced()
        for key in self.all_keys():
            self.queue.add(key)
        self._tasks = [
            asyncio.create_task(self._watch_health(), name="mcs-health"),
            self.queue.resync_every(self.resync_period, self.all_keys),
        ]
        try:
            await self.queue.run_workers(self._process, self.workers)
        finally:
            for task in self._tasks:
                task.cancel()

    async def stop(self) -> None:
        self.queue.shutdown()
        for m in self.members.values():
            await m.stop()
        if self.mcs is not None:
            await self.mcs.stop()

    # -- events -> keys ------------------------------------------------------------------

    def _on_member_event(self, m: MemberCluster, plural: str, obj: JSON) -> None:
        if plural == "namespaces":
            ns = obj["metadata"]["name"]
            for key in self.all_keys():
                if key[0] == ns:
                    self.queue.add(key)
            return
        if plural == ENDPOINT_SLICES.plural and not L.is_ours(obj):
            labels = obj["metadata"].get("labels") or {}
            name = labels.get(L.LABEL_SERVICE_NAME)
            if name:
                key = (obj["metadata"]["namespace"], name)
                self._first_seen.setdefault(key, time.monotonic())
                self.queue.add(key)
            return
        self._enqueue_obj(obj)

    def _enqueue_obj(self, obj: JSON) -> None:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        if L.is_ours(obj):
            name = labels.get(L.LABEL_MCS_SERVICE_NAME) or labels.get(L.LABEL_MCS_OBJECT)
        else:
            name = meta["name"]
        if name and meta.get("namespace"):
            self.queue.add((meta["namespace"], name))

    def all_keys(self) -> set[Key]:
        keys: set[Key] = set()
        for m in self.members.values():
            keys.update(m.keys())
        if self.mcs is not None:
            keys.update((o["metadata"]["namespace"], o["metadata"]["name"]) for o in self.mcs.items())
        return keys

    async def _watch_health(self) -> None:
        """Mark clusters stale past the grace period, and fresh again when they return."""
        while True:
            for m in self.members.values():
                stale = not m.reachable and m.unreachable_for() >= self.grace_period
                if self.metrics is not None:
                    self.metrics.set_cluster_reachable(m.name, m.reachable)
                    for informer in m.informers:
                        self.metrics.set_informer_synced(
                            m.name, informer.resource.plural, informer.synced.is_set())
                if stale != (m.name in self._stale):
                    log.warning("cluster %s %s", m.name,
                                "unreachable past grace period: endpoints marked not ready"
                                if stale else "is back: endpoints restored",
                                extra={"cluster": m.name})
                    (self._stale.add if stale else self._stale.discard)(m.name)
                    for key in self.all_keys():
                        self.queue.add(key)
            await asyncio.sleep(min(1.0, max(0.05, self.grace_period / 4)))

    # -- reconcile -----------------------------------------------------------------------

    def observe(self, namespace: str, name: str) -> tuple[dict[str, ClusterState], JSON | None]:
        states = {}
        for m in self.members.values():
            states[m.cluster_id] = ClusterState(
                cluster=m.cluster_id,
                namespace_exists=m.namespaces.get(None, namespace) is not None,
                export=m.exports.get(namespace, name),
                service=_native(m.services.get(namespace, name)),
                source_slices=m.source_slices(namespace, name),
                stale=m.name in self._stale,
            )
        mcs = self.mcs.get(namespace, name) if self.mcs is not None else None
        return states, mcs

    async def _process(self, key: Key) -> None:
        """One queue item: reconcile, counted; failures go back with backoff."""
        started = time.monotonic()
        result = "success"
        try:
            await self.reconcile(key)
        except RetryLater:
            result = "retry"
            raise
        except Exception:
            result = "error"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.observe_reconcile(result, time.monotonic() - started)
                self.metrics.queue_depth.set(len(self.queue))

    async def reconcile(self, key: Key) -> None:
        namespace, name = key
        states, mcs = self.observe(namespace, name)
        desired = desired_service(namespace, name, states, mcs)
        # Clusters are written concurrently: a change waits for the slowest cluster, not the sum.
        results = await asyncio.gather(*(self._sync_member(m, desired) for m in self.members.values()))
        pending = {cluster: why for cluster, why in results if why}  # cluster id -> why not done
        await self._write_export_status(desired, pending)
        await self._write_mcs_status(mcs, desired)
        seen = self._first_seen.pop(key, None)
        if seen is not None and self.metrics is not None and not pending:
            self.metrics.observe_propagation(seen)
        if pending:
            raise RetryLater(f"{namespace}/{name}: " + ", ".join(f"{c}: {w}" for c, w in sorted(pending.items())))

    async def _sync_member(self, m: MemberCluster, desired: ServiceDesired) -> tuple[str, str]:
        """Everything one cluster must hold for this Service; (cluster id, why not done or "")."""
        try:
            if m.cluster_id in desired.consumers:
                await self._sync_import(m, desired)
            else:
                await self._remove_import(m, desired.namespace, desired.name)
            await self._sync_mcs(m, desired)
        except Unreachable:
            return m.cluster_id, "unreachable"
        except Conflict:
            return m.cluster_id, "changed while we wrote; retrying"
        except _Blocked as exc:
            return m.cluster_id, str(exc)
        return m.cluster_id, ""

    async def _sync_import(self, m: MemberCluster, desired: ServiceDesired) -> None:
        ns, name = desired.namespace, desired.name
        imp = m.imports.get(ns, name)
        shadow = m.services.get(ns, desired.shadow_name)
        for obj, what in ((imp, "ServiceImport"), (shadow, "Service")):
            if obj is not None and not L.is_ours(obj):
                raise _Blocked(f"{what} {ns}/{obj['metadata']['name']} exists and is not ours")
        want_shadow = shadow_object(desired)
        if shadow is not None and _headless(shadow) != desired.headless:
            await self.writer.delete(m, SERVICES, shadow)  # clusterIP is immutable
            shadow = None
        if shadow is None:
            shadow = await self.writer.create(m, SERVICES, want_shadow)
            if shadow is None:
                return  # our cache is behind; the ADDED event brings us back
        elif not _same_service(shadow, want_shadow):
            updated = copy.deepcopy(shadow)
            updated["metadata"]["labels"] = want_shadow["metadata"]["labels"]
            for field in ("ports", "sessionAffinity", "sessionAffinityConfig"):
                if field in want_shadow["spec"]:
                    updated["spec"][field] = want_shadow["spec"][field]
                else:
                    updated["spec"].pop(field, None)
            shadow = await self.writer.replace(m, SERVICES, updated)
        spec = shadow.get("spec") or {}
        want_imp = import_object(desired, spec.get("clusterIPs") or [], spec.get("ipFamilies") or [])
        if imp is None:
            imp = await self.writer.create(m, SERVICE_IMPORTS, want_imp)
            if imp is None:
                return
        elif imp.get("spec") != want_imp["spec"] or _meta_differs(imp, want_imp):
            updated = copy.deepcopy(imp)
            updated["spec"] = want_imp["spec"]
            updated["metadata"]["labels"] = want_imp["metadata"]["labels"]
            updated["metadata"]["annotations"] = want_imp["metadata"].get("annotations") or {}
            imp = await self.writer.replace(m, SERVICE_IMPORTS, updated)
        clusters = [{"cluster": c} for c in desired.exporters]
        if (imp.get("status") or {}).get("clusters") != clusters:
            imp = await self.writer.patch_status(
                m, SERVICE_IMPORTS, imp, {"clusters": clusters}
            )
        owner = owner_reference(imp)
        if shadow["metadata"].get("ownerReferences") != [owner]:
            updated = copy.deepcopy(shadow)
            updated["metadata"]["ownerReferences"] = [owner]
            await self.writer.replace(m, SERVICES, updated)
        observed = m.ours(m.slices, ns, name, L.ORIGIN_EXPORT)
        await self.writer.sync_slices(m, desired.import_slices, observed, [owner])

    async def _remove_import(self, m: MemberCluster, namespace: str, name: str) -> None:
        for informer, res in ((m.slices, ENDPOINT_SLICES), (m.services, SERVICES),
                              (m.imports, SERVICE_IMPORTS)):
            for obj in m.ours(informer, namespace, name, L.ORIGIN_EXPORT):
                await self.writer.delete(m, res, obj)

    async def _sync_mcs(self, m: MemberCluster, desired: ServiceDesired) -> None:
        observed = m.ours(m.slices, desired.namespace, desired.name, L.ORIGIN_MCS)
        want = desired.mcs_slices.get(m.cluster_id, [])
        if not want and not observed:
            return
        native = m.services.get(desired.namespace, desired.name)
        owners = [owner_reference(native)] if native is not None and want else []
        await self.writer.sync_slices(m, want, observed, owners)

    async def _write_export_status(self, desired: ServiceDesired, pending: dict[str, str]) -> None:
        now = rfc3339(time.time())
        waiting = sorted(c for c in pending if c in desired.consumers)
        for m in self.members.values():
            export = m.exports.get(desired.namespace, desired.name)
            conditions = desired.export_conditions.get(m.cluster_id)
            if export is None or conditions is None:
                continue
            if conditions[0].status != "True":
                ready = Condition("Ready", "False", "Failed", conditions[0].message)
            elif waiting:
                ready = Condition("Ready", "False", "Pending",
                                  "waiting for clusters: " + ", ".join(waiting))
            else:
                ready = Condition("Ready", "True", "Exported",
                                  f"imported into {len(desired.consumers)} cluster(s)")
            observed = (export.get("status") or {}).get("conditions")
            merged = merge_conditions(observed, [*conditions, ready], now,
                                      export["metadata"].get("generation"))
            if _strip_times(observed) == _strip_times(merged):
                continue
            try:
                await self.writer.patch_status(m, SERVICE_EXPORTS, export, {"conditions": merged})
            except (Unreachable, Conflict) as exc:
                pending.setdefault(m.cluster_id, type(exc).__name__)

    async def _write_mcs_status(self, mcs: JSON | None, desired: ServiceDesired) -> None:
        if mcs is None or desired.mcs_status is None or self.hub is None:
            return
        cond = desired.mcs_status["condition"]
        status = mcs.get("status") or {}
        merged = merge_conditions(status.get("conditions"), [Condition(**cond)],
                                  rfc3339(time.time()), mcs["metadata"].get("generation"))
        want = {"unknownClusters": desired.mcs_status["unknownClusters"], "conditions": merged}
        if (status.get("unknownClusters") == want["unknownClusters"]
                and _strip_times(status.get("conditions")) == _strip_times(merged)):
            return
        meta = mcs["metadata"]
        try:
            await self.hub.patch(MULTI_CLUSTER_SERVICES, meta["namespace"], meta["name"],
                                 {"status": want}, subresource="status")
        except ApiError as exc:
            log.warning("cannot write MultiClusterService status: %s", exc)


class _Blocked(Exception):
    """Something that is not ours stands where we would write."""


def _native(service: JSON | None) -> JSON | None:
    return None if service is not None and L.is_ours(service) else service


def _headless(service: JSON) -> bool:
    return (service.get("spec") or {}).get("clusterIP") == "None"


def _same_service(current: JSON, want: JSON) -> bool:
    cs, ws = current.get("spec") or {}, want["spec"]
    ports = [{k: v for k, v in p.items() if k != "targetPort"} for p in cs.get("ports") or []]
    return (
        ports == ws["ports"]
        and cs.get("sessionAffinity", "None") == ws.get("sessionAffinity", "None")
        and cs.get("sessionAffinityConfig") == ws.get("sessionAffinityConfig")
        and (current["metadata"].get("labels") or {}) == want["metadata"]["labels"]
    )


def _meta_differs(current: JSON, want: JSON) -> bool:
    cm, wm = current["metadata"], want["metadata"]
    return (cm.get("labels") or {}) != wm["labels"] or (cm.get("annotations") or {}) != (
        wm.get("annotations") or {}
    )


def _strip_times(conditions: list[dict] | None) -> list[dict]:
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions or []]
