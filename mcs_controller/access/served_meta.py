"""What the served Kubernetes API says about itself: discovery, Table rows, paging tokens."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mcs_controller.access import errors
from mcs_controller.access.api import JSON, PatchType
from mcs_controller.access.resources import ALL, SERVED_VERSIONS, Resource

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
SHORT_NAMES = {
    "services": ["svc"], "namespaces": ["ns"], "pods": ["po"], "events": ["ev"],
    "ingresses": ["ing"], "serviceexports": ["svcex"], "serviceimports": ["svcim"],
}
CATEGORIES = {"services": ["all"], "pods": ["all"]}
PATCH_TYPES: dict[str, PatchType] = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "merge",  # approximated: lists are replaced
    "application/json-patch+json": "json",
}
KUBE_VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0+amcs", "gitCommit": "",
                "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "gc",
                "platform": "linux/amd64"}


def served_versions(res: Resource) -> tuple[str, ...]:
    return SERVED_VERSIONS.get(res.key, (res.version,))


def find(group: str, version: str, plural: str) -> Resource | None:
    for res in ALL:
        if res.group == group and res.plural == plural and version in served_versions(res):
            return res.at_version(version)
    return None


def group_versions() -> dict[str, list[str]]:
    """Every group (core is "") and its versions, the stored version first (preferred)."""
    out: dict[str, list[str]] = {}
    for res in ALL:
        versions = out.setdefault(res.group, [])
        for v in (res.version, *served_versions(res)):
            if v not in versions:
                versions.append(v)
    return out


def status(exc: errors.ApiError) -> web.Response:
    return web.json_response(exc.as_status(), status=exc.status)


def bad_request(message: str) -> web.Response:
    return status(errors.ApiError(message, status=400, reason="BadRequest"))


def field_filter(selector: str | None) -> Callable[[JSON], bool]:
    """fieldSelector: metadata.name / metadata.namespace with = == != (what kubectl sends)."""
    if not selector:
        return lambda obj: True
    tests: list[tuple[str, str, bool]] = []
    for term in selector.split(","):
        op = next((o for o in ("!=", "==", "=") if o in term), None)
        if op is None:
            raise ValueError(f"invalid field selector term {term!r}")
        field, _, value = term.partition(op)
        negate = op == "!="
        field = field.strip()
        if field not in ("metadata.name", "metadata.namespace"):
            raise ValueError(f'field label not supported: "{field}"')
        tests.append((field.split(".")[1], value.strip(), negate))

    def match(obj: JSON) -> bool:
        meta = obj.get("metadata") or {}
        return all((meta.get(key, "") == value) != negate for key, value, negate in tests)

    return match


def encode_continue(rv: str, after: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps({"rv": rv, "after": after}).encode()).decode()


def decode_continue(token: str) -> tuple[str, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(data["rv"]), (str(data["after"][0]), str(data["after"][1]))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError("invalid continue token") from exc


def key(obj: JSON) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def age(obj: JSON) -> str:
    """kubectl's short AGE ("45s", "12m", "5h", "3d") from creationTimestamp."""
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    try:
        born = time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except (TypeError, ValueError):
        return "<unknown>"
    secs = max(0, int(time.time() - born))
    for limit, unit, size in ((120, "s", 1), (3 * 3600, "m", 60), (48 * 3600, "h", 3600)):
        if secs < limit:
            return f"{secs // size}{unit}"
    return f"{secs // 86400}d"


def ports(ports: Any) -> str:
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports or []) or "<none>"


#: Extra kubectl columns per kind, between NAME and AGE (server-side printing, as=Table).
_COLUMNS: dict[str, list[tuple[str, Callable[[JSON], Any]]]] = {
    "Service": [
        ("Type", lambda o: o.get("spec", {}).get("type", "ClusterIP")),
        ("Cluster-IP", lambda o: o.get("spec", {}).get("clusterIP", "<none>")),
        ("External-IP", lambda o: ",".join(o.get("spec", {}).get("externalIPs") or [])
         or "<none>"),
        ("Port(s)", lambda o: ports(o.get("spec", {}).get("ports"))),
    ],
    "ServiceImport": [
        ("Type", lambda o: o.get("spec", {}).get("type", "")),
        ("IP", lambda o: ",".join(o.get("spec", {}).get("ips") or []) or "<none>"),
    ],
    "EndpointSlice": [
        ("AddressType", lambda o: o.get("addressType", "")),
        ("Ports", lambda o: ",".join(str(p.get("port")) for p in o.get("ports") or [])
         or "<unset>"),
        ("Endpoints", lambda o: ",".join(a for e in o.get("endpoints") or []
                                         for a in e.get("addresses") or []) or "<unset>"),
    ],
    "Namespace": [("Status", lambda o: o.get("status", {}).get("phase", ""))],
}


def wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def table(res: Resource, items: list[JSON], meta: JSON, headers: bool = True) -> JSON:
    """A meta.k8s.io/v1 Table, which kubectl prints as is (its NAMESPACE from the rows)."""
    extra = _COLUMNS.get(res.kind, [])
    columns = [("Name", lambda o: o["metadata"].get("name", "")), *extra, ("Age", age)]
    rows = [{"cells": [fn(o) for _, fn in columns],
             "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata") or {}}} for o in items]
    defs = [{"name": n, "type": "string", "format": "name" if n == "Name" else "",
             "description": "", "priority": 0} for n, _ in columns] if headers else []
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
            "columnDefinitions": defs, "rows": rows}
