"""A rebuild reuses each unchanged Ingress's parse (gateway/routing/reuse.py), and the table
it makes is the one a build from scratch makes, step after step of changes to Ingresses,
the Services and ConfigMaps they look up, and the build's own settings."""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any

import pytest
from test_gw_routing_kit import CLUSTERS, MSE, NGX, OURS, ingress, path, req, rule

from gateway.routing import BuildOptions, build_route_table
from gateway.routing.ratelimit import RateZones
from gateway.routing.reuse import Reuse
from gateway.routing.table import RouteTable


def shape(value: Any) -> Any:
    """A value as comparable plain data: two builds from the same inputs give equal shapes
    (dataclasses by their fields, even those compared by identity, e.g. CorsPolicy)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,
                tuple(shape(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, (list, tuple)):
        return tuple(shape(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((repr(k), shape(v)) for k, v in value.items()))
    if isinstance(value, (frozenset, set)):
        return tuple(sorted(repr(v) for v in value))
    if isinstance(value, re.Pattern):
        return ("re", value.pattern, value.flags)
    if callable(value) or type(value).__repr__ is object.__repr__:
        return type(value).__name__  # functions, limiters: made anew by each build
    return value


def table_shape(table: RouteTable) -> Any:
    routes = [r for v in table._hosts.hosts() for r in v.paths.values() + [v.default] if r]
    decisions = sorted((shape(d) for r in routes for d in r.decisions()), key=repr)
    return (table.describe(), table.describe_aliases(), table.describe_passthrough(),
            table.describe_www(), table.describe_default(), shape(table.backends()), decisions)


def svc(name: str, *ports: tuple[str, int]) -> dict:
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": n, "port": p} for n, p in ports]}}


class Fleet:
    """The inputs of a build, changed step by step as the informers would: each change is
    a new object (the caches never change one in place)."""

    def __init__(self) -> None:
        self.ingresses: dict[str, dict] = {}
        self.services = {("default", s["metadata"]["name"]): s for s in (
            svc("web", ("http", 8080)), svc("api", ("grpc", 9000), ("http", 81)),
            svc("errors", ("http", 8081)))}
        self.configmaps: dict[tuple[str, str], dict] = {
            ("default", "auth-headers"): {"data": {"X-Team": "blue"}}}
        self.clusters = frozenset(CLUSTERS)
        self.default_backend: str | None = None

    def put(self, name: str, host: str, ann: dict, port: int | str = "http",
            service: str = "web", age: int = 0) -> None:
        self.ingresses[name] = ingress(name, rule(host, path("/", service, port=port)),
                                       ann=ann, age=age)

    def options(self, reuse: Reuse | None, zones: RateZones) -> BuildOptions:
        return BuildOptions(clusters=self.clusters, services=dict(self.services),
                            configmap=lambda ns, n: self.configmaps.get((ns, n)),
                            default_backend=self.default_backend, rate_zones=zones,
                            ssl_passthrough=True, reuse=reuse)


def seeded(fleet: Fleet) -> None:
    """Ingresses that between them use what a parse may look up or report."""
    fleet.put("plain", "a.example.com", {}, age=1)
    fleet.put("named-port", "b.example.com", {}, port="http", service="api", age=2)
    fleet.put("auth", "c.example.com", {
        NGX + "auth-url": "http://auth.default.svc/check",
        NGX + "auth-proxy-set-headers": "auth-headers"}, age=3)
    fleet.put("errors", "d.example.com", {NGX + "default-backend": "errors",
                                           NGX + "custom-http-errors": "503"}, age=4)
    fleet.put("codes", "k.example.com", {NGX + "custom-http-errors": "404"}, age=12)
    fleet.put("limits", "e.example.com", {NGX + "limit-rps": "5", NGX + "enable-cors": "true",
                                           NGX + "rewrite-target": "/x"}, age=5)
    fleet.put("pass-1", "f.example.com", {NGX + "ssl-passthrough": "true"}, age=6)
    fleet.put("pass-2", "f.example.com", {NGX + "ssl-passthrough": "true",
                                           NGX + "server-alias": "g.example.com"}, age=7)
    fleet.put("weights", "h.example.com", {
        OURS + "cluster-weights": "cluster1-beijing=80,cluster2-beijing=20",
        OURS + "target-cluster": "cluster1-hangzhou", NGX + "load-balance": "nope"}, age=8)
    fleet.put("canary", "a.example.com", {NGX + "canary": "true", NGX + "canary-weight": "30",
                                           OURS + "target-cluster": "cluster2-beijing"}, age=9)
    fleet.put("mse", "i.example.com", {MSE + "mirror-target-service": "api:81",
                                        MSE + "mirror-percentage": "50"}, age=10)


def both(fleet: Fleet, reuse: Reuse, zones: RateZones) -> RouteTable:
    """Build with reuse and from scratch; the two tables and problem lists agree."""
    ingresses, classes = list(fleet.ingresses.values()), []
    reused, r_problems = build_route_table(ingresses, classes, fleet.options(reuse, zones),
                                           rng=random.Random(1))
    fresh, f_problems = build_route_table(ingresses, classes, fleet.options(None, zones),
                                          rng=random.Random(1))
    assert [str(p) for p in r_problems] == [str(p) for p in f_problems]
    assert table_shape(reused) == table_shape(fresh)
    return reused


STEPS = [
    ("nothing changed", lambda f: None, 0),
    ("one Ingress edited", lambda f: f.put("plain", "a.example.com",
                                           {NGX + "ssl-redirect": "false"}, age=1), 1),
    ("a named port renumbered",
     lambda f: f.services.__setitem__(("default", "api"), svc("api", ("http", 82))), 1),
    ("a Service it reads replaced by an equal copy",
     lambda f: f.services.__setitem__(("default", "errors"), svc("errors", ("http", 8081))), 1),
    ("the auth headers ConfigMap changed",
     lambda f: f.configmaps.__setitem__(("default", "auth-headers"), {"data": {"X-Team": "red"}}), 1),
    ("the auth headers ConfigMap deleted",
     lambda f: f.configmaps.pop(("default", "auth-headers")), 1),
    ("a Service nothing reads added",
     lambda f: f.services.__setitem__(("default", "other"), svc("other", ("http", 1))), 0),
    ("the older passthrough Ingress deleted", lambda f: f.ingresses.pop("pass-1"), 0),
    ("a new Ingress", lambda f: f.put("new", "j.example.com", {}, age=11), 1),
    ("a backend's policy changed", lambda f: f.put("plain", "a.example.com", {
        OURS + "panic-threshold": "20"}, age=1), 1),
    ("the member clusters changed",
     lambda f: setattr(f, "clusters", frozenset(CLUSTERS[:2])), "all"),
    ("a global default backend set", lambda f: setattr(f, "default_backend", "default/web"), "all"),
]


def test_each_step_parses_only_what_changed_and_builds_the_table_a_fresh_build_makes():
    fleet, reuse, zones = Fleet(), Reuse(), RateZones()
    seeded(fleet)
    last = both(fleet, reuse, zones).backends()
    assert reuse.parsed == len(fleet.ingresses) and reuse.reused == 0
    for what, change, parsed in STEPS:
        change(fleet)
        backends = both(fleet, reuse, zones).backends()
        expected = len(fleet.ingresses) if parsed == "all" else parsed
        assert (reuse.parsed, reuse.reused) == (expected, len(fleet.ingresses) - expected), what
        if parsed == 0:  # the same policies, as the same objects (the manager's sync skips them)
            assert backends.keys() == last.keys() and all(
                backends[ref] is last[ref] for ref in backends), what
        last = backends


def test_a_reused_parse_reports_its_problems_and_keeps_its_rate_limit_zone():
    fleet, reuse, zones = Fleet(), Reuse(), RateZones()
    fleet.put("bad", "a.example.com", {NGX + "load-balance": "nope", NGX + "limit-rps": "5"})
    for _ in range(2):
        table, problems = build_route_table(list(fleet.ingresses.values()), [],
                                            fleet.options(reuse, zones))
        zones.prune()  # as the gateway does after each install
        assert any("load-balance" in str(p) for p in problems)
        decision = table.route(req())
        assert decision is not None and decision.rate_limit is not None and list(zones.zones) == ["default/bad|"]
    assert reuse.reused == 1
    zone = zones.zones["default/bad|"]
    build_route_table(list(fleet.ingresses.values()), [], fleet.options(reuse, zones))
    zones.prune()
    assert zones.zones["default/bad|"] is zone  # its counters carry on


@pytest.mark.parametrize(("broken", "caught_by"), [
    ("lookups", {"a named port renumbered", "the auth headers ConfigMap changed",
                 "the auth headers ConfigMap deleted"}),
    ("settings", {"the member clusters changed", "a global default backend set"}),
    ("policies", {"a backend's policy changed", "the member clusters changed"}),
])
def test_the_steps_catch_stale_reuse(broken: str, caught_by: set[str], monkeypatch):
    """Guard for the table-driven test above: with one of reuse.py's checks switched off,
    the steps that need it build a table that differs from the fresh build."""
    import gateway.routing.reuse as module
    if broken == "lookups":
        monkeypatch.setattr(module, "_same", lambda entry, build: True)
    if broken == "settings":
        begin = Reuse.begin

        def keep_settings(self: Reuse, settings: tuple) -> None:
            begin(self, self._settings)
        monkeypatch.setattr(Reuse, "begin", keep_settings)
    if broken == "policies":
        policy = Reuse.policy

        def last_one(self: Reuse, ref, fields):  # whatever the fields now
            if ref not in self._policies:
                return policy(self, ref, fields)
            self._next_policies[ref] = self._policies[ref]
            return self._policies[ref][1]
        monkeypatch.setattr(Reuse, "policy", last_one)
    fleet, reuse, zones = Fleet(), Reuse(), RateZones()
    seeded(fleet)
    both(fleet, reuse, zones)
    caught = set()
    for what, change, _ in STEPS:
        change(fleet)
        try:
            both(fleet, reuse, zones)
        except AssertionError:
            caught.add(what)
            reuse = Reuse()  # start over from a right table
            both(fleet, reuse, zones)
    assert caught == caught_by
