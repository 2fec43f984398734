"""Several exports of one Service -> one ServiceImport spec, and the conflicts (KEP-1645).

Precedence is the export's creationTimestamp, oldest first (1-second granularity, ties
broken by cluster name). Ports are merged as a union, first by name then by
(protocol, port); every other global property is taken from the oldest export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcs_controller.model.conditions import Condition


@dataclass
class Exporter:
    """A valid export: the cluster, its ServiceExport and the Service it names."""

    cluster: str
    export: dict
    service: dict

    @property
    def precedence(self) -> tuple[str, str]:
        return (self.export["metadata"].get("creationTimestamp", ""), self.cluster)


@dataclass
class Merged:
    spec: dict  # ServiceImport.spec without ips/ipFamilies (the consumer's shadow Service gives those)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    conflict: Condition = Condition("Conflict", "False", "NoConflicts", "")


def service_type(service: dict) -> str:
    return "Headless" if (service.get("spec") or {}).get("clusterIP") == "None" else "ClusterSetIP"


def _spec(e: Exporter) -> dict:
    return e.service.get("spec") or {}


def _export_spec(e: Exporter) -> dict:
    return e.export.get("spec") or {}


@dataclass(frozen=True)
class _Property:
    field: str  # import spec field (or a pseudo-field for metadata)
    reason: str
    label: str  # how a message names it
    value: Callable[[Exporter], Any]


_PROPERTIES = (
    _Property("type", "TypeConflict", "type", lambda e: service_type(e.service)),
    _Property("sessionAffinity", "SessionAffinityConflict", "sessionAffinity",
              lambda e: _spec(e).get("sessionAffinity") or "None"),
    _Property("sessionAffinityConfig", "SessionAffinityConfigConflict", "sessionAffinityConfig",
              lambda e: _spec(e).get("sessionAffinityConfig")
              if _spec(e).get("sessionAffinity") == "ClientIP" else None),
    _Property("internalTrafficPolicy", "InternalTrafficPolicyConflict", "internalTrafficPolicy",
              lambda e: _spec(e).get("internalTrafficPolicy")),
    _Property("trafficDistribution", "TrafficDistributionConflict", "trafficDistribution",
              lambda e: _spec(e).get("trafficDistribution")),
    _Property("ipFamilies", "IPFamilyConflict", "ipFamilies",
              lambda e: sorted(_spec(e).get("ipFamilies") or ["IPv4"])),
    _Property("exportedLabels", "LabelsConflict", "exportedLabels",
              lambda e: _export_spec(e).get("exportedLabels") or {}),
    _Property("exportedAnnotations", "AnnotationsConflict", "exportedAnnotations",
              lambda e: _export_spec(e).get("exportedAnnotations") or {}),
)
#: Fields that go to the import spec as they are (others are metadata or consumer-given).
_SPEC_FIELDS = ("type", "sessionAffinity", "sessionAffinityConfig", "internalTrafficPolicy",
                "trafficDistribution")


def import_port(port: dict) -> dict:
    """A ServicePort as ServiceImport carries it: no targetPort, no nodePort."""
    out = {"protocol": port.get("protocol") or "TCP", "port": port["port"]}
    if port.get("name"):
        out["name"] = port["name"]
    if port.get("appProtocol"):
        out["appProtocol"] = port["appProtocol"]
    return out


def _port_key(port: dict) -> tuple[str, int]:
    return (port["protocol"], port["port"])


def merge_ports(exporters: list[Exporter]) -> tuple[list[dict], list[str]]:
    """The union of every exporter's ports; clashes go to the oldest. Returns (ports, clashes)."""
    merged: list[dict] = []
    by_name: dict[str, dict] = {}
    by_key: dict[tuple[str, int], dict] = {}
    clashes: list[str] = []
    for e in exporters:
        for raw in _spec(e).get("ports") or []:
            port = import_port(raw)
            name = port.get("name", "")
            same_name = by_name.get(name)
            if same_name is not None:
                if _port_key(same_name) != _port_key(port):
                    clashes.append(f"port {name or '(unnamed)'} in {e.cluster!r}")
                continue
            if _port_key(port) in by_key:
                clashes.append(f"port {port['protocol']}/{port['port']} in {e.cluster!r}")
                continue
            merged.append(port)
            by_name[name] = port
            by_key[_port_key(port)] = port
    return merged, clashes


def _port_set(e: Exporter) -> set[tuple]:
    return {tuple(sorted(import_port(p).items())) for p in _spec(e).get("ports") or []}


def merge_exports(exporters: list[Exporter]) -> Merged:
    """One import spec from valid exporters (non-empty), with the Conflict condition."""
    ordered = sorted(exporters, key=lambda e: e.precedence)
    winner = ordered[0]
    reasons: list[str] = []
    messages: list[str] = []
    for prop in _PROPERTIES:
        chosen = prop.value(winner)
        disagree = [e.cluster for e in ordered if prop.value(e) != chosen]
        if disagree:
            reasons.append(prop.reason)
            messages.append(
                f'Conflicting {prop.label}. Using {_show(chosen)} from oldest service export in '
                f'"{winner.cluster}". {len(disagree)}/{len(ordered)} clusters disagree '
                f"({', '.join(disagree)})."
            )
    ports, clashes = merge_ports(ordered)
    port_sets = {frozenset(_port_set(e)) for e in ordered}
    if len(port_sets) > 1:
        reasons.insert(0, "PortConflict")
        detail = f" Clashing: {', '.join(clashes)}; the oldest export's ports win." if clashes else ""
        messages.insert(
            0,
            "Conflicting ports. Using the union of exported ports, oldest service export "
            f'"{winner.cluster}" first.{detail}',
        )
    spec: dict = {"ports": ports}
    for prop in _PROPERTIES:
        if prop.field in _SPEC_FIELDS:
            value = prop.value(winner)
            if value is not None:
                spec[prop.field] = value
    conflict = (
        Condition("Conflict", "True", ",".join(reasons), " ".join(messages))
        if reasons
        else Condition("Conflict", "False", "NoConflicts", "")
    )
    labels = dict(_export_spec(winner).get("exportedLabels") or {})
    annotations = dict(_export_spec(winner).get("exportedAnnotations") or {})
    return Merged(spec=spec, labels=labels, annotations=annotations, conflict=conflict)


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)
