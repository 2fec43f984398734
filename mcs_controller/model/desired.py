"""Observed state of one Service across the fleet -> what every cluster must hold.

The unit of work is one Service name `<namespace>/<name>`: its exports (ServiceExport ->
ServiceImport, shadow Service `amcs-<name>`, imported EndpointSlices) and its
MultiClusterService (provider endpoints under the native name in consumer clusters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcs_controller.model import labels as L
from mcs_controller.model.conditions import Condition
from mcs_controller.model.merge import Exporter, Merged, merge_exports
from mcs_controller.model.slices import mirror_slices


@dataclass
class ClusterState:
    """What one member cluster holds for one Service name."""

    cluster: str
    namespace_exists: bool
    export: dict | None = None
    service: dict | None = None
    #: The Service's own EndpointSlices (`kubernetes.io/service-name=<name>`, not ours).
    source_slices: list[dict] = field(default_factory=list)
    #: Unreachable past the grace period: its endpoints are published as not ready.
    stale: bool = False


@dataclass
class ServiceDesired:
    namespace: str
    name: str
    #: Valid exporters, oldest first: `ServiceImport.status.clusters`.
    exporters: list[str] = field(default_factory=list)
    #: Per exporting cluster, the conditions its ServiceExport should carry (Ready excluded:
    #: that one depends on how the writes went).
    export_conditions: dict[str, list[Condition]] = field(default_factory=dict)
    merged: Merged | None = None
    #: Clusters that must hold the ServiceImport, shadow Service and imported slices.
    consumers: list[str] = field(default_factory=list)
    import_slices: list[dict] = field(default_factory=list)
    #: MultiClusterService: consumer cluster -> slices under the native Service name.
    mcs_slices: dict[str, list[dict]] = field(default_factory=dict)
    mcs_status: dict | None = None

    @property
    def shadow_name(self) -> str:
        return L.shadow_service_name(self.name)

    @property
    def headless(self) -> bool:
        return self.merged is not None and self.merged.spec["type"] == "Headless"


def _validity(state: ClusterState) -> Condition:
    if state.service is None:
        return Condition("Valid", "False", "NoService",
                         f"Service {state.export['metadata']['namespace']}/"
                         f"{state.export['metadata']['name']} not found")
    if (state.service.get("spec") or {}).get("type") == "ExternalName":
        return Condition("Valid", "False", "InvalidServiceType",
                         "Service of type ExternalName cannot be exported")
    return Condition("Valid", "True", "Valid", "Service is valid for export")


def import_labels(name: str) -> dict[str, str]:
    return {L.LABEL_OWNED_BY: L.OWNED_BY_VALUE, L.LABEL_ORIGIN: L.ORIGIN_EXPORT,
            L.LABEL_MCS_SERVICE_NAME: name}


def export_slice_labels(name: str) -> dict[str, str]:
    return {
        **import_labels(name),
        L.LABEL_SERVICE_NAME: L.shadow_service_name(name),
        L.LABEL_MANAGED_BY: L.CONTROLLER_NAME,
    }


def mcs_slice_labels(name: str) -> dict[str, str]:
    return {
        L.LABEL_OWNED_BY: L.OWNED_BY_VALUE,
        L.LABEL_ORIGIN: L.ORIGIN_MCS,
        L.LABEL_MCS_OBJECT: name,
        L.LABEL_SERVICE_NAME: name,
        L.LABEL_MANAGED_BY: L.CONTROLLER_NAME,
    }


def _cluster_names(mcs: dict, field_name: str) -> list[str]:
    items = (mcs.get("spec") or {}).get(field_name) or []
    return [item["name"] for item in items if isinstance(item, dict) and item.get("name")]


def desired_mcs(
    namespace: str, name: str, states: dict[str, ClusterState], mcs: dict
) -> tuple[dict[str, list[dict]], dict]:
    """Provider endpoints under the native name in each consumer that has the native Service."""
    providers, consumers = _cluster_names(mcs, "providerClusters"), _cluster_names(mcs, "consumerClusters")
    unknown = sorted({c for c in providers + consumers if c not in states})
    out: dict[str, list[dict]] = {}
    for consumer in consumers:
        target = states.get(consumer)
        if target is None or target.service is None:
            continue
        slices: list[dict] = []
        for provider in providers:
            source = states.get(provider)
            if source is None or provider == consumer:
                continue
            slices += mirror_slices(
                source_slices=source.source_slices,
                source_cluster=provider,
                namespace=namespace,
                name_prefix=f"{name}-from",
                labels=mcs_slice_labels(name),
                stale=source.stale,
            )
        out[consumer] = slices
    if unknown:
        cond = {"type": "Ready", "status": "False", "reason": "UnknownClusters",
                "message": "unknown clusters: " + ", ".join(unknown)}
    else:
        cond = {"type": "Ready", "status": "True", "reason": "Synced",
                "message": f"{len(out)} consumer cluster(s) hold provider endpoints"}
    return out, {"unknownClusters": unknown, "condition": cond}


def desired_service(
    namespace: str, name: str, states: dict[str, ClusterState], mcs: dict | None = None
) -> ServiceDesired:
    """Everything the fleet must hold for `<namespace>/<name>` (pure; no clocks, no I/O)."""
    out = ServiceDesired(namespace=namespace, name=name)
    exporters: list[Exporter] = []
    for cluster in sorted(states):
        state = states[cluster]
        if state.export is None:
            continue
        valid = _validity(state)
        out.export_conditions[cluster] = [valid]
        if valid.status == "True":
            exporters.append(Exporter(cluster, state.export, state.service or {}))
    if exporters:
        exporters.sort(key=lambda e: e.precedence)
        out.exporters = [e.cluster for e in exporters]
        out.merged = merge_exports(exporters)
        for e in exporters:
            out.export_conditions[e.cluster].append(out.merged.conflict)
        out.consumers = sorted(c for c, s in states.items() if s.namespace_exists)
        for e in exporters:
            state = states[e.cluster]
            out.import_slices += mirror_slices(
                source_slices=state.source_slices,
                source_cluster=e.cluster,
                namespace=namespace,
                name_prefix=out.shadow_name,
                labels=export_slice_labels(name),
                stale=state.stale,
            )
    if mcs is not None:
        out.mcs_slices, out.mcs_status = desired_mcs(namespace, name, states, mcs)
    return out


def import_object(desired: ServiceDesired, ips: list[str], ip_families: list[str]) -> dict:
    """The ServiceImport for one consumer, given its shadow Service's addresses."""
    assert desired.merged is not None
    spec = dict(desired.merged.spec)
    if spec["type"] == "ClusterSetIP":
        spec["ips"] = [ip for ip in ips if ip and ip != "None"]
        spec["ipFamilies"] = list(ip_families)
    meta: dict = {
        "name": desired.name,
        "namespace": desired.namespace,
        "labels": {**desired.merged.labels, **import_labels(desired.name)},
    }
    if desired.merged.annotations:
        meta["annotations"] = dict(desired.merged.annotations)
    return {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": meta, "spec": spec}


def shadow_object(desired: ServiceDesired) -> dict:
    """`amcs-<name>`: no selector; the import's ports; headless when the import is."""
    assert desired.merged is not None
    spec: dict = {
        "type": "ClusterIP",
        "ports": [dict(p) for p in desired.merged.spec["ports"]],
    }
    if desired.headless:
        spec["clusterIP"] = "None"
    for key in ("sessionAffinity", "sessionAffinityConfig"):
        if key in desired.merged.spec and not desired.headless:
            spec[key] = desired.merged.spec[key]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": desired.shadow_name, "namespace": desired.namespace,
                     "labels": import_labels(desired.name)},
        "spec": spec,
    }
