"""Builders shared by the routing tests (no tests here)."""

from __future__ import annotations

import random
from itertools import count

from gateway.routing import BuildOptions, Problem, RouteTable, build_route_table
from gateway.types import BackendRef, RequestView, RouteDecision

CLUSTERS = ("cluster1-beijing", "cluster2-beijing", "cluster1-hangzhou")
NGX = "nginx.ingress.kubernetes.io/"
MSE = "mse.ingress.kubernetes.io/"
OURS = "multicluster.amcs.dev/"
_clock = count()
MAIN = BackendRef("default", "main", 80)
HEADER = {OURS + "cluster-header": "x-mcs-cluster"}


def backend(svc: str, port: int | str = 80) -> dict:
    key = "number" if isinstance(port, int) else "name"
    return {"service": {"name": svc, "port": {key: port}}}


def path(p: str | None, svc: str = "svc", ptype: str | None = "Prefix",
         port: int | str = 80) -> dict:
    item: dict = {"backend": backend(svc, port)}
    if p is not None:
        item["path"] = p
    if ptype is not None:
        item["pathType"] = ptype
    return item


def rule(host: str | None, *paths: dict) -> dict:
    out: dict = {"http": {"paths": list(paths)}}
    if host is not None:
        out["host"] = host
    return out


def ingress(name: str, *rules: dict, ns: str = "default", ann: dict | None = None,
            cls: str | None = "amcs", default: dict | None = None, age: int | None = None,
            legacy_class: str | None = None) -> dict:
    """An Ingress; `age` orders creation (default: the order of construction)."""
    seconds = next(_clock) if age is None else age
    annotations = dict(ann or {})
    if legacy_class is not None:
        annotations["kubernetes.io/ingress.class"] = legacy_class
    spec: dict = {}
    if cls is not None:
        spec["ingressClassName"] = cls
    if rules:
        spec["rules"] = list(rules)
    if default is not None:
        spec["defaultBackend"] = default
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations,
                         "creationTimestamp": f"2024-01-01T{seconds // 3600:02d}:"
                                              f"{seconds // 60 % 60:02d}:{seconds % 60:02d}Z"},
            "spec": spec}


def simple(name: str, host: str | None = "a.example.com", p: str = "/", svc: str = "main",
           ann: dict | None = None, ptype: str = "Prefix", **kw) -> dict:
    return ingress(name, rule(host, path(p, svc, ptype)), ann=ann, **kw)


def build(*ingresses: dict, classes: list[dict] | None = None, clusters=CLUSTERS,
          services: dict | None = None, seed: int = 7, **kw) -> tuple[RouteTable, list[Problem]]:
    options = BuildOptions(clusters=frozenset(clusters), services=services, **kw)
    return build_route_table(list(ingresses), classes or [], options, rng=random.Random(seed))


def req(host: str = "a.example.com", p: str = "/", headers: dict | None = None,
        method: str = "GET", scheme: str = "http") -> RequestView:
    return RequestView(method=method, path=p, host=host,
                       headers={k.lower(): v for k, v in (headers or {}).items()}, scheme=scheme)


def decide(table: RouteTable, host: str = "a.example.com", p: str = "/",
           headers: dict | None = None, method: str = "GET",
           scheme: str = "http") -> RouteDecision | None:
    return table.route(req(host, p, headers, method, scheme))


def service_of(table: RouteTable, host: str = "a.example.com", p: str = "/",
               headers: dict | None = None) -> str | None:
    decision = decide(table, host, p, headers)
    return None if decision is None else decision.backend.service


def problems_for(problems: list[Problem], ingress: str, annotation: str | None = None) -> list[str]:
    """Messages about `ingress` ("ns/name"); with `annotation`, only those naming it."""
    return [p.message for p in problems if p.ingress == ingress
            and (annotation is None or (p.annotation or "").endswith(annotation))]


def one(ann: dict, **kw) -> tuple[RouteTable, list[Problem], list[str]]:
    """A one-rule Ingress "default/ing" -> service "main" with these annotations."""
    table, problems = build(simple("ing", svc="main", ann=ann), **kw)
    return table, problems, problems_for(problems, "default/ing")


def main_and_canary(main_ann: dict, canary_ann: dict, **kw) -> tuple[RouteTable, list[Problem]]:
    """Ingress "default/main" -> service "main", and "default/can", a canary taking all of
    its traffic to service "canary", with these annotations besides."""
    return build(
        simple("main", svc="main", age=1, ann=main_ann),
        simple("can", svc="canary", age=2,
               ann={NGX + "canary": "true", NGX + "canary-weight": "100", **canary_ann}), **kw)


def assert_denied(parsed: object, problems: list[str], reason: str) -> None:
    """An auth setting that cannot be used: the parsed policy is `broken` with `reason`, and
    the reported problem says the routes answer 503."""
    broken = getattr(parsed, "broken", None)
    assert broken is not None and reason in broken, parsed
    assert any(reason in m and "answer 503" in m for m in problems), problems
