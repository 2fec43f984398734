"""The checks the API server would make before storing an object, where our code relies on them.

Each problem names the field (`spec.ports[0].port`), so the loader can report file + field.
The embedded store accepts loopback EndpointSlice addresses, which a real kube-apiserver
rejects: simulated pods live on 127.0.0.0/8 (DESIGN.md section 4).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from mcs_controller.access.resources import Resource

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ports(ports: Any, where: str, problems: list[str], *, need_port: bool = True) -> None:
    if not isinstance(ports, list):
        problems.append(f"{where}: must be a list")
        return
    for i, port in enumerate(ports):
        if not isinstance(port, dict):
            problems.append(f"{where}[{i}]: must be an object")
            continue
        if need_port and not _is_int(port.get("port")):
            problems.append(f"{where}[{i}].port: required integer")
        elif "port" in port and not 0 < port["port"] < 65536:
            problems.append(f"{where}[{i}].port: must be 1-65535")
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            problems.append(f"{where}[{i}].protocol: must be TCP, UDP or SCTP")


def _service(obj: dict, problems: list[str]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        problems.append("spec: required")
        return
    svc_type = spec.get("type", "ClusterIP")
    if svc_type not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        problems.append(f"spec.type: unsupported value {svc_type!r}")
    if svc_type == "ExternalName":
        if not spec.get("externalName"):
            problems.append("spec.externalName: required for type ExternalName")
        return
    if spec.get("clusterIP") != "None" and not spec.get("ports"):
        problems.append("spec.ports: required")
    if "ports" in spec:
        _ports(spec["ports"], "spec.ports", problems)


def _endpoint_slice(obj: dict, problems: list[str]) -> None:
    family = obj.get("addressType")
    if family not in ("IPv4", "IPv6", "FQDN"):
        problems.append("addressType: required, one of IPv4, IPv6, FQDN")
    endpoints = obj.get("endpoints") or []
    if not isinstance(endpoints, list):
        problems.append("endpoints: must be a list")
        return
    if len(endpoints) > 1000:
        problems.append("endpoints: at most 1000 endpoints per slice")
    for i, ep in enumerate(endpoints):
        addresses = ep.get("addresses") if isinstance(ep, dict) else None
        if not addresses or not isinstance(addresses, list):
            problems.append(f"endpoints[{i}].addresses: required")
            continue
        for j, addr in enumerate(addresses):
            if family in ("IPv4", "IPv6"):
                try:
                    ip = ipaddress.ip_address(addr)
                except ValueError:
                    problems.append(f"endpoints[{i}].addresses[{j}]: {addr!r} is not an IP address")
                    continue
                if (ip.version == 4) != (family == "IPv4"):
                    problems.append(f"endpoints[{i}].addresses[{j}]: {addr} is not {family}")
    _ports(obj.get("ports") or [], "ports", problems, need_port=False)


def _service_import(obj: dict, problems: list[str]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        problems.append("spec: required")
        return
    if spec.get("type") not in ("ClusterSetIP", "Headless"):
        problems.append("spec.type: required, one of ClusterSetIP, Headless")
    if "ports" not in spec:
        problems.append("spec.ports: required")
    else:
        _ports(spec["ports"], "spec.ports", problems)
    if len(spec.get("ips") or []) > 2:
        problems.append("spec.ips: at most 2 items")


def _cluster_list(spec: dict, field: str, problems: list[str]) -> None:
    items = spec.get(field, [])
    if not isinstance(items, list):
        problems.append(f"spec.{field}: must be a list")
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("name"):
            problems.append(f"spec.{field}[{i}].name: required")


def _multi_cluster_service(obj: dict, problems: list[str]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        problems.append("spec: required")
        return
    _cluster_list(spec, "providerClusters", problems)
    _cluster_list(spec, "consumerClusters", problems)


_BY_KIND = {
    "Service": _service,
    "EndpointSlice": _endpoint_slice,
    "ServiceImport": _service_import,
    "MultiClusterService": _multi_cluster_service,
}


def problems(res: Resource, obj: Any) -> list[str]:
    """Everything wrong with obj, each naming its field; empty when it may be stored."""
    if not isinstance(obj, dict):
        return ["object: must be a mapping"]
    found: list[str] = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: required"]
    name = meta.get("name") or ""
    if not name and not meta.get("generateName"):
        found.append("metadata.name: required")
    elif name and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
        found.append(f"metadata.name: {name!r} is not a valid DNS subdomain name")
    if res.kind in ("Namespace", "Service") and name and not _DNS_LABEL.match(name):
        found.append(f"metadata.name: {name!r} must be a DNS label (RFC 1123)")
    for section in ("labels", "annotations"):
        if meta.get(section) is not None and not isinstance(meta[section], dict):
            found.append(f"metadata.{section}: must be a mapping")
        for key, value in (meta.get(section) or {}).items():
            if not isinstance(value, str):
                found.append(f"metadata.{section}.{key}: value must be a string")
    check = _BY_KIND.get(res.kind)
    if check:
        check(obj, found)
    return found
