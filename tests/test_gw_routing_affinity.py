"""Cookie session affinity wired into the route table: annotations accepted (also on
canaries), one affinity per decision (cookie Path = rule path, backend tag), the affinity
steps before the canary rules and the weighted pick, cluster-pinned variants, /routes."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from test_gw_routing_kit import (
    HEADER,
    MAIN,
    MSE,
    NGX,
    OURS,
    build,
    decide,
    ingress,
    one,
    problems_for,
    simple,
)

from gateway.routing.affinity import AFFINITY_KEYS, StickyValue, backend_tag, regex_cookie_path
from gateway.routing.values import COMPATIBLE_KEYS, UNSUPPORTED_KEYS
from gateway.types import BackendRef, SessionAffinity

ON = {NGX + "affinity": "cookie"}
CANARY = BackendRef("default", "canary", 80)
KEY = "0123456789abcdef"


def cookie(affinity: SessionAffinity, key: str = KEY) -> dict:
    """Request headers carrying a sticky cookie issued under `affinity`."""
    return {"cookie": f"other=1; {affinity.cookie}={StickyValue(key, None, affinity.backend_tag).encode()}"}


def route_of(table, host: str = "a.example.com", p: str = "/"):
    return table._hosts.find(host).paths.match(p)


def test_affinity_keys_are_compatible_not_unsupported():
    assert AFFINITY_KEYS <= COMPATIBLE_KEYS and not AFFINITY_KEYS & UNSUPPORTED_KEYS


@pytest.mark.parametrize("prefix", [NGX, MSE])
def test_each_decision_gets_the_ingress_affinity(prefix):
    table, _, msgs = one({prefix + "affinity": "cookie", prefix + "affinity-mode": "persistent",
                          prefix + "session-cookie-name": "route",
                          prefix + "session-cookie-max-age": "60"})
    assert msgs == []
    d = decide(table)
    assert d.affinity == SessionAffinity(cookie="route", max_age=60, persistent=True, path="/",
                                         backend_tag=backend_tag(MAIN))
    # One side only: the prebuilt decision carries it, the fast path is untouched.
    route = route_of(table)
    assert route.static and route.sticky == ()


def test_routes_without_affinity_have_none():
    table, _, msgs = one({})
    assert msgs == [] and decide(table).affinity is None


def test_cookie_path_defaults_to_the_rule_path():
    table, problems = build(
        simple("app", p="/app", ann=ON, age=1),
        simple("fixed", p="/fixed", ann={**ON, NGX + "session-cookie-path": "/"}, age=2),
        simple("plain", p="/plain", age=3),
        ingress("dflt", default={"service": {"name": "dflt", "port": {"number": 80}}}, ann=ON,
                age=4))
    assert problems == []
    assert decide(table, p="/app/x").affinity.path == "/app"
    assert decide(table, p="/fixed").affinity.path == "/"
    assert decide(table, p="/plain").affinity is None
    assert decide(table, host="other.example.com").affinity.path == "/"  # catch-all


def test_regex_rule_paths_get_a_literal_cookie_path():
    table, problems = build(simple("re", p="/api/v1(/|$)(.*)", ptype="ImplementationSpecific",
                                   ann={**ON, NGX + "use-regex": "true"}))
    assert problems == []
    assert decide(table, p="/api/v1/users").affinity.path == "/api"
    table, problems = build(simple("re", p="/api(/|$)(.*)", ptype="ImplementationSpecific",
                                   ann={**ON, NGX + "rewrite-target": "/$2",
                                        NGX + "session-cookie-path": "/api"}))
    assert problems == []
    d = decide(table, p="/api/users")
    assert d.path == "/users" and d.affinity.path == "/api"  # explicit path kept, rewritten


@pytest.mark.parametrize(("rule_path", "want"), [
    ("/app", "/app"), ("/a.b/c(.*)", "/"), ("/x/y[0-9]+", "/x"), ("/x/(.*)", "/x"), ("(.*)", "/")])
def test_regex_cookie_path(rule_path, want):
    aff = SessionAffinity(path=rule_path)
    assert regex_cookie_path(aff, rule_path).path == want
    assert regex_cookie_path(SessionAffinity(path="/set"), rule_path).path == "/set"
    assert regex_cookie_path(None, rule_path) is None


def canary_build(main_ann: dict, canary_ann: dict, seed: int = 7):
    main = simple("main", svc="main", ann=main_ann, age=1)
    can = simple("canary", svc="canary", age=2,
                 ann={NGX + "canary": "true", NGX + "canary-by-header": "x-canary",
                      NGX + "canary-weight": "50", **canary_ann})
    return build(main, can, seed=seed)


def test_affinity_steps_run_before_the_canary_rules():
    table, problems = canary_build({**ON, NGX + "session-cookie-name": "route"}, {})
    assert problems == []
    main = decide(table, headers={"x-canary": "never"})
    canary = decide(table, headers={"x-canary": "always"})
    assert main.backend == MAIN and canary.backend == CANARY and canary.canary
    # sticky (default): the canary uses the main line's cookie settings, its own tag.
    assert canary.affinity == SessionAffinity(cookie="route", path="/",
                                              backend_tag=backend_tag(CANARY))
    assert main.affinity.backend_tag == backend_tag(MAIN)
    # Without a cookie the weight splits; with one, every request stays on its side.
    assert set(Counter(decide(table).backend for _ in range(200))) == {MAIN, CANARY}
    assert {decide(table, headers=cookie(canary.affinity)).backend for _ in range(100)} == {CANARY}
    assert {decide(table, headers=cookie(main.affinity)).backend for _ in range(100)} == {MAIN}
    # As ingress-nginx: a client pinned to the main line stays there despite the header.
    hdrs = {**cookie(main.affinity), "x-canary": "always"}
    assert decide(table, headers=hdrs).backend == MAIN
    # A cookie of another backend, another name or not ours: the canary rules decide.
    foreign = SessionAffinity(cookie="route", backend_tag=backend_tag(BackendRef("x", "y", 1)))
    for hdrs in (cookie(foreign), cookie(SessionAffinity(backend_tag=canary.affinity.backend_tag)),
                 {"cookie": "route=garbage"}):
        assert decide(table, headers={**hdrs, "x-canary": "always"}).backend == CANARY
        assert decide(table, headers={**hdrs, "x-canary": "never"}).backend == MAIN


def test_legacy_canary_ignores_affinity_or_uses_its_own():
    table, problems = canary_build(ON, {NGX + "affinity-canary-behavior": "legacy"})
    assert problems == []
    assert decide(table, headers={"x-canary": "always"}).affinity is None
    main = decide(table, headers={"x-canary": "never"}).affinity
    assert decide(table, headers={**cookie(main), "x-canary": "always"}).backend == MAIN
    table, problems = canary_build({}, {NGX + "affinity-canary-behavior": "legacy", **ON,
                                        NGX + "session-cookie-name": "c"})
    assert problems == []
    own = decide(table, headers={"x-canary": "always"}).affinity
    assert own.cookie == "c" and own.backend_tag == backend_tag(CANARY)
    assert decide(table, headers={"x-canary": "never"}).affinity is None
    assert {decide(table, headers=cookie(own)).backend for _ in range(50)} == {CANARY}


def test_affinity_problems_on_main_and_canary():
    table, problems = canary_build({NGX + "affinity-canary-behavior": "legacy"},
                                   {**ON, NGX + "session-cookie-name": "c"})
    assert problems_for(problems, "default/main", "affinity-canary-behavior")
    msgs = problems_for(problems, "default/canary", "affinity")
    assert len(msgs) == 1 and "sticky" in msgs[0]  # its own affinity is not used
    assert problems_for(problems, "default/canary", "session-cookie-name") == []
    assert decide(table, headers={"x-canary": "always"}).affinity is None
    _, _, msgs = one({**ON, NGX + "session-cookie-hash": "sha1",
                      NGX + "session-cookie-partitioned": "true"})
    assert len(msgs) == 2 and all("not supported" in m for m in msgs)


def test_weighted_destinations_keep_their_sessions():
    ing = simple("main", svc="main", ann={**ON, MSE + "destination":
                                          "50% foo.default.svc.cluster.local:80\n"
                                          "50% bar.default.svc.cluster.local:80\n"})
    table, problems = build(ing, seed=3)
    assert problems == []
    foo, bar = BackendRef("default", "foo", 80), BackendRef("default", "bar", 80)
    seen = {d.backend: d for d in (decide(table) for _ in range(100))}
    assert set(seen) == {foo, bar}
    for ref in (foo, bar):
        assert seen[ref].affinity.backend_tag == backend_tag(ref)
        assert {decide(table, headers=cookie(seen[ref].affinity)).backend
                for _ in range(50)} == {ref}


def test_cluster_pinned_variants_keep_the_affinity():
    table, _, msgs = one({**ON, **HEADER})
    assert msgs == []
    plain = decide(table)
    pinned = decide(table, headers={"x-mcs-cluster": "cluster2-beijing"})
    assert pinned.backend == BackendRef("default", "main", 80, cluster="cluster2-beijing")
    assert pinned.affinity == plain.affinity and plain.affinity is not None


def test_describe_shows_the_affinity():
    table, _ = canary_build({**ON, NGX + "affinity-mode": "persistent",
                             NGX + "session-cookie-samesite": "lax"}, {})
    route = json.loads(json.dumps(table.describe()))[0]
    assert route["affinity"]["mode"] == "persistent"
    assert route["affinity"]["cookie"] == "INGRESSCOOKIE" and route["affinity"]["samesite"] == "Lax"
    assert route["affinity"]["backend_tag"] == backend_tag(MAIN)
    assert route["canary"]["affinity"]["backend_tag"] == backend_tag(CANARY)
    table, _, _ = one({OURS + "cluster-header": "x"})
    assert json.loads(json.dumps(table.describe()))[0]["affinity"] is None
