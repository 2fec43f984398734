"""Source EndpointSlices of one cluster -> the EndpointSlices a consumer cluster holds.

One source cluster and one address family per slice, at most 100 endpoints each.
Names are derived from their content's identity (service, cluster, family, ports), so a
restart computes the same names and writes nothing.
"""

from __future__ import annotations

import hashlib
import json

from mcs_controller.model import labels as L

_FAMILIES = ("IPv4", "IPv6")
#: Endpoint fields that mean the same thing in another cluster (targetRef and hints do not).
_KEPT_FIELDS = ("addresses", "conditions", "hostname", "nodeName", "zone")


def _short_hash(value: object, size: int = 6) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:size]


def slice_name(prefix: str, cluster: str, family: str, ports: list[dict], index: int) -> str:
    """`<prefix>-<cluster>-<family>-<ports hash>-<n>`, shortened with a hash past 253 chars."""
    name = f"{prefix}-{cluster}-{family.lower()}-{_short_hash(ports)}-{index}".lower()
    if len(name) > 253:
        name = f"{name[:240]}-{_short_hash(name, 10)}"
    return name


def slice_port(port: dict) -> dict:
    out = {k: port[k] for k in ("name", "protocol", "port", "appProtocol") if k in port}
    out.setdefault("protocol", "TCP")
    return out


def mirrored_endpoint(endpoint: dict, stale: bool) -> dict:
    """An endpoint as consumers see it: conditions verbatim, or not ready when the source is gone."""
    out = {k: endpoint[k] for k in _KEPT_FIELDS if k in endpoint}
    if stale:
        conditions = dict(out.get("conditions") or {})
        conditions["ready"] = False
        conditions["serving"] = False
        out["conditions"] = conditions
    return out


def group_endpoints(source_slices: list[dict], stale: bool) -> dict[tuple[str, str], tuple[list, list]]:
    """(family, ports key) -> (ports, endpoints), deduplicated by address, sorted."""
    groups: dict[tuple[str, str], tuple[list, dict]] = {}
    for src in source_slices:
        family = src.get("addressType")
        if family not in _FAMILIES:
            continue  # FQDN slices have no meaning across clusters
        ports = sorted((slice_port(p) for p in src.get("ports") or []),
                       key=lambda p: (p.get("name", ""), p.get("protocol"), p.get("port", 0)))
        key = (family, json.dumps(ports, sort_keys=True))
        _, endpoints = groups.setdefault(key, (ports, {}))
        for ep in src.get("endpoints") or []:
            if ep.get("addresses"):
                endpoints.setdefault(tuple(ep["addresses"]), mirrored_endpoint(ep, stale))
    return {
        key: (ports, [eps[a] for a in sorted(eps)])
        for key, (ports, eps) in sorted(groups.items())
    }


def mirror_slices(
    *,
    source_slices: list[dict],
    source_cluster: str,
    namespace: str,
    name_prefix: str,
    labels: dict[str, str],
    stale: bool = False,
    max_endpoints: int = L.MAX_ENDPOINTS_PER_SLICE,
) -> list[dict]:
    """Desired slices (no ownerReferences: those need the consumer's object uids)."""
    out: list[dict] = []
    for (family, _), (ports, endpoints) in group_endpoints(source_slices, stale).items():
        chunks = [endpoints[i:i + max_endpoints] for i in range(0, len(endpoints), max_endpoints)]
        for index, chunk in enumerate(chunks or [[]]):
            out.append({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name(name_prefix, source_cluster, family, ports, index),
                    "namespace": namespace,
                    "labels": {**labels, L.LABEL_SOURCE_CLUSTER: source_cluster},
                },
                "addressType": family,
                "ports": ports,
                "endpoints": chunk,
            })
    return out


_KEPT_META = ("name", "namespace", "labels", "ownerReferences", "resourceVersion", "uid",
              "creationTimestamp")


def content_digest(obj: dict) -> str:
    """One string for what a slice carries (family, ports, endpoints): equal iff equal."""
    body = [obj.get("addressType"), obj.get("ports") or [], obj.get("endpoints") or []]
    return hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=16).hexdigest()


def trim_slice(obj: dict) -> dict:
    """What the controller keeps of an EndpointSlice in its cache: what it compares or mirrors.

    Source slices keep the endpoint fields that are mirrored (no targetRef, hints,
    managedFields or annotations). Our own slices are only ever compared with what we
    want, so they keep just their metadata and a digest of their content. Large fleets'
    caches stay small that way. Never mutates `obj`.
    """
    meta = obj.get("metadata") or {}
    out = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {k: meta[k] for k in _KEPT_META if k in meta},
    }
    if (meta.get("labels") or {}).get(L.LABEL_OWNED_BY) == L.OWNED_BY_VALUE:
        out["contentDigest"] = content_digest(obj)
        return out
    out["addressType"] = obj.get("addressType")
    out["ports"] = obj.get("ports") or []
    out["endpoints"] = [
        {k: ep[k] for k in _KEPT_FIELDS if k in ep} for ep in obj.get("endpoints") or []
    ]
    return out
