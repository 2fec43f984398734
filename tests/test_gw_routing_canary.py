"""Canary: ingress-nginx's decision procedure (digest 2.2) with MSE's query/cookie-value
extensions, weights, structural merge rules, MSE subsets and `destination`."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from test_gw_routing_kit import (
    CLUSTERS,
    MSE,
    NGX,
    OURS,
    build,
    decide,
    ingress,
    path,
    problems_for,
    rule,
    service_of,
    simple,
)

from gateway.routing import BuildOptions, build_route_table
from gateway.types import BackendRef


def canary_table(ann: dict, *, main_ann: dict | None = None, seed: int = 7, **kw):
    main = simple("main", svc="main", ann=main_ann, age=1)
    can = simple("canary", svc="canary", ann={NGX + "canary": "true", **ann}, age=2, **kw)
    return build(main, can, seed=seed)


def served(ann: dict, headers: dict | None = None, p: str = "/") -> str | None:
    table, problems = canary_table(ann)
    assert problems == []
    return service_of(table, p=p, headers=headers)


# The full procedure, case by case. weight 0 => nothing by chance (consequence c).
PROCEDURE = [
    # header
    ({"canary-by-header": "x-canary"}, {"x-canary": "always"}, "canary"),
    ({"canary-by-header": "x-canary"}, {"x-canary": "never"}, "main"),
    ({"canary-by-header": "x-canary", "canary-weight": "100"}, {"x-canary": "never"}, "main"),
    ({"canary-by-header": "x-canary"}, {"x-canary": "yes"}, "main"),
    ({"canary-by-header": "x-canary"}, {}, "main"),
    ({"canary-by-header": "X_Canary"}, {"x-canary": "always"}, "canary"),  # nginx $http_x_canary
    ({"canary-by-header": "x-canary"}, {"X-CANARY": "always"}, "canary"),
    ({"canary-by-header": "x-canary"}, {"x-canary": "Always"}, "main"),  # values are exact
    # (b) unknown header value falls through to cookie, then weight
    ({"canary-by-header": "x-canary", "canary-by-cookie": "c"},
     {"x-canary": "maybe", "cookie": "c=always"}, "canary"),
    ({"canary-by-header": "x-canary", "canary-weight": "100"}, {"x-canary": "maybe"}, "canary"),
    # header value
    ({"canary-by-header": "x-canary", "canary-by-header-value": "v2"}, {"x-canary": "v2"},
     "canary"),
    ({"canary-by-header": "x-canary", "canary-by-header-value": "v2"}, {"x-canary": "v3"},
     "main"),
    # (a) with -value set, 'never' does not block cookie/weight, 'always' is not special
    ({"canary-by-header": "x-canary", "canary-by-header-value": "v2", "canary-by-cookie": "c"},
     {"x-canary": "never", "cookie": "c=always"}, "canary"),
    ({"canary-by-header": "x-canary", "canary-by-header-value": "v2", "canary-weight": "100"},
     {"x-canary": "never"}, "canary"),
    ({"canary-by-header": "x-canary", "canary-by-header-value": "v2"},
     {"x-canary": "always"}, "main"),
    ({"canary-by-header-value": "v2"}, {"x-canary": "v2"}, "main"),  # no effect without header
    # header pattern (unanchored PCRE-like search), ignored when -value is set
    ({"canary-by-header": "x-user", "canary-by-header-pattern": "^(alice|bob)$"},
     {"x-user": "bob"}, "canary"),
    ({"canary-by-header": "x-user", "canary-by-header-pattern": "beta"},
     {"x-user": "group-beta-7"}, "canary"),
    ({"canary-by-header": "x-user", "canary-by-header-pattern": "^(alice|bob)$"},
     {"x-user": "carol"}, "main"),
    ({"canary-by-header": "x-user", "canary-by-header-pattern": "^a", "canary-by-cookie": "c"},
     {"x-user": "zed", "cookie": "c=always"}, "canary"),
    ({"canary-by-header": "x-user", "canary-by-header-value": "x",
      "canary-by-header-pattern": ".*"}, {"x-user": "y"}, "main"),
    # cookie
    ({"canary-by-cookie": "canary"}, {"cookie": "canary=always"}, "canary"),
    ({"canary-by-cookie": "canary"}, {"cookie": "a=1; canary=always; b=2"}, "canary"),
    ({"canary-by-cookie": "canary"}, {"cookie": "a=1, Canary=always"}, "canary"),
    ({"canary-by-cookie": "canary", "canary-weight": "100"}, {"cookie": "canary=never"}, "main"),
    ({"canary-by-cookie": "canary", "canary-weight": "100"}, {"cookie": "canary=x"}, "canary"),
    ({"canary-by-cookie": "canary"}, {"cookie": "canary=x"}, "main"),
    ({"canary-by-cookie": "canary"}, {"cookie": "xcanary=always"}, "main"),
    # header before cookie: header 'never' stops, header 'always' wins over cookie 'never'
    ({"canary-by-header": "h", "canary-by-cookie": "c"}, {"h": "never", "cookie": "c=always"},
     "main"),
    ({"canary-by-header": "h", "canary-by-cookie": "c"}, {"h": "always", "cookie": "c=never"},
     "canary"),
    # weight alone
    ({"canary-weight": "0"}, {}, "main"),
    ({"canary-weight": "100"}, {}, "canary"),
    ({"canary-weight": "150"}, {}, "canary"),
]


@pytest.mark.parametrize(("keys", "headers", "expected"), PROCEDURE)
def test_canary_decision_procedure(keys, headers, expected):
    assert served({NGX + k: v for k, v in keys.items()}, headers) == expected


def test_canary_annotations_under_the_mse_prefix_work_the_same():
    assert served({MSE + "canary-by-header": "x-canary"}, {"x-canary": "always"}) == "canary"


# MSE extensions: query (header or query > cookie > weight) and cookie value
MSE_PROCEDURE = [
    ({"canary-by-query": "canary"}, "/?canary=always", {}, "canary"),
    ({"canary-by-query": "canary"}, "/?a=1&canary=never", {}, "main"),
    ({"canary-by-query": "canary", "canary-weight": "100"}, "/?canary=never", {}, "main"),
    ({"canary-by-query": "canary"}, "/?Canary=always", {}, "main"),  # names case-sensitive
    ({"canary-by-query": "canary", "canary-by-query-value": "v2"}, "/?canary=v2", {}, "canary"),
    ({"canary-by-query": "canary", "canary-by-query-value": "v2"}, "/?canary=always", {},
     "main"),
    ({"canary-by-query": "u", "canary-by-query-pattern": "^1[0-9]$"}, "/?u=12", {}, "canary"),
    ({"canary-by-query": "u", "canary-by-query-pattern": "^1[0-9]$"}, "/?u=2", {}, "main"),
    # header before query, query before cookie
    ({"canary-by-header": "h", "canary-by-query": "q"}, "/?q=always", {"h": "never"}, "main"),
    ({"canary-by-query": "q", "canary-by-cookie": "c"}, "/?q=always", {"cookie": "c=never"},
     "canary"),
    ({"canary-by-query": "q", "canary-by-cookie": "c"}, "/?q=other", {"cookie": "c=always"},
     "canary"),
    # cookie value
    ({"canary-by-cookie": "c", "canary-by-cookie-value": "gray"}, "/", {"cookie": "c=gray"},
     "canary"),
    ({"canary-by-cookie": "c", "canary-by-cookie-value": "gray"}, "/", {"cookie": "c=always"},
     "main"),
    ({"canary-by-cookie": "c", "canary-by-cookie-value": "gray", "canary-weight": "100"}, "/",
     {"cookie": "c=never"}, "canary"),
]


@pytest.mark.parametrize(("keys", "p", "headers", "expected"), MSE_PROCEDURE)
def test_mse_query_and_cookie_value_extensions(keys, p, headers, expected):
    ann = {(MSE if k.startswith("canary-by-query") or k == "canary-by-cookie-value" else NGX) + k: v
           for k, v in keys.items()}
    assert served(ann, headers, p) == expected


def test_mse_only_canary_keys_under_the_nginx_prefix_are_ignored():
    table, problems = canary_table({NGX + "canary-by-query": "q"})
    assert any("MSE-only" in m for m in problems_for(problems, "default/canary",
                                                      "canary-by-query"))
    assert service_of(table, p="/?q=always") == "main"


def test_invalid_header_pattern_is_ignored_and_header_keeps_always_never():
    table, problems = canary_table({NGX + "canary-by-header": "h",
                                    NGX + "canary-by-header-pattern": "(unclosed"})
    assert problems_for(problems, "default/canary", "canary-by-header-pattern")
    assert service_of(table, headers={"h": "always"}) == "canary"
    assert service_of(table, headers={"h": "(unclosed"}) == "main"


@pytest.mark.parametrize(("weight", "total", "share"), [
    ("30", None, 0.30),
    ("5", None, 0.05),
    ("125", "1000", 0.125),  # weight-total honoured when > 100
    ("25", "50", 0.25),  # nginx: a total <= 100 is treated as 100 (balancer.lua)
    ("1", "100000", 0.00001),
])
def test_canary_weight_shares_are_statistically_right(weight, total, share):
    ann = {NGX + "canary-weight": weight}
    if total is not None:
        ann[NGX + "canary-weight-total"] = total
    table, problems = canary_table(ann, seed=12345)
    assert problems == []
    n = 20000
    hits = sum(decide(table).canary for _ in range(n))
    tolerance = max(4 * (share * (1 - share) / n) ** 0.5, 0.0005)
    assert abs(hits / n - share) <= tolerance


def test_weight_zero_never_routes_by_chance_and_same_seed_same_sequence():  # (c)
    table, _ = canary_table({NGX + "canary-weight": "0"})
    assert not any(decide(table).canary for _ in range(5000))
    seqs = []
    for _ in range(2):
        table, _ = canary_table({NGX + "canary-weight": "50"}, seed=99)
        seqs.append([decide(table).canary for _ in range(200)])
    assert seqs[0] == seqs[1] and 50 < sum(seqs[0]) < 150


@pytest.mark.parametrize(("key", "value"), [("canary-weight", "ten"),
                                            ("canary-weight-total", "0"),
                                            ("canary-weight-total", "x")])
def test_bad_weight_values_default_as_nginx_does(key, value):
    table, problems = canary_table({NGX + "canary-weight": "100", NGX + key: value})
    assert problems_for(problems, "default/canary", key)
    expected = "main" if key == "canary-weight" else "canary"
    assert service_of(table) == expected


# -- structure -----------------------------------------------------------------------------------


def test_canary_decision_carries_fallback_and_main_route_settings():
    main_ann = {NGX + "proxy-read-timeout": "7", NGX + "upstream-vhost": "internal.svc",
                NGX + "proxy-next-upstream-tries": "5"}
    table, problems = canary_table({NGX + "canary-weight": "100",
                                    NGX + "proxy-read-timeout": "99"}, main_ann=main_ann)
    assert problems_for(problems, "default/canary", "proxy-read-timeout")  # ignored on canary
    d = decide(table)
    assert d.canary is True
    assert d.backend == BackendRef("default", "canary", 80)
    assert d.fallbacks == (BackendRef("default", "main", 80),)
    assert d.route_name == "default/canary|a.example.com/"
    assert d.timeouts.read == 7 and d.upstream_host == "internal.svc" and d.retry.attempts == 5


@pytest.mark.parametrize(("host", "p", "ptype"), [
    ("a.example.com", "/", "Exact"),  # pathType differs
    ("a.example.com", "/other", "Prefix"),  # path differs
    ("b.example.com", "/", "Prefix"),  # host differs
])
def test_canary_merges_only_into_identical_host_path_and_type(host, p, ptype):
    main = simple("main", svc="main", age=1)
    can = simple("canary", host, p, svc="canary", ptype=ptype, age=2,
                 ann={NGX + "canary": "true", NGX + "canary-weight": "100"})
    table, problems = build(main, can)
    assert any("no main rule" in m for m in problems_for(problems, "default/canary"))
    assert service_of(table) == "main"
    assert service_of(table, host, p) in (None, "main")


def test_one_canary_per_rule_the_oldest_wins():
    main = simple("main", svc="main", age=1)
    first = simple("c1", svc="c1", age=2, ann={NGX + "canary": "true", NGX + "canary-weight": "100"})
    second = simple("c2", svc="c2", age=3, ann={NGX + "canary": "true",
                                                NGX + "canary-weight": "100"})
    table, problems = build(second, main, first)
    assert service_of(table) == "c1"
    assert any("default/c1 already applies" in m for m in problems_for(problems, "default/c2"))


def test_canary_configured_but_not_enabled_is_a_plain_ingress():
    main = simple("main", svc="main", age=1)
    half = simple("half", svc="half", age=2, ann={NGX + "canary-weight": "100"})
    table, problems = build(main, half)
    assert any("configured but not enabled" in m for m in problems_for(problems,
                                                                         "default/half"))
    assert any("already served by default/main" in m for m in problems_for(problems,
                                                                            "default/half"))
    assert service_of(table) == "main"


def test_invalid_canary_boolean_is_reported_and_false():
    table, problems = canary_table({NGX + "canary": "yes", NGX + "canary-weight": "100"})
    assert any("not a boolean" in m for m in problems_for(problems, "default/canary",
                                                          NGX + "canary"))
    assert service_of(table) == "main"


def test_canary_with_the_main_backend_is_ignored():
    main = simple("main", svc="main", age=1)
    same = simple("same", svc="main", age=2, ann={NGX + "canary": "true",
                                                  NGX + "canary-weight": "100"})
    table, problems = build(main, same)
    assert any("main rule's own" in m for m in problems_for(problems, "default/same"))
    assert decide(table).canary is False


def test_canary_default_backend_merges_into_the_catch_all():
    main = ingress("main", default={"service": {"name": "main", "port": {"number": 80}}}, age=1)
    can = ingress("can", default={"service": {"name": "can", "port": {"number": 80}}}, age=2,
                  ann={NGX + "canary": "true", NGX + "canary-by-header": "h"})
    table, problems = build(main, can)
    assert problems == []
    assert service_of(table, "x.org", "/q", {"h": "always"}) == "can"
    assert service_of(table, "x.org", "/q") == "main"


def test_canary_balancing_applies_to_the_canary_backend_only():
    table, problems = canary_table({NGX + "canary-weight": "10", NGX + "load-balance": "least_conn"},
                                   main_ann={NGX + "load-balance": "random"})
    assert problems == []
    policies = table.backends()
    assert policies[BackendRef("default", "canary", 80)].algorithm == "least_conn"
    assert policies[BackendRef("default", "main", 80)].algorithm == "random"


def test_target_cluster_canary_is_the_same_service_in_one_cluster():
    main = simple("main", svc="web", age=1)
    can = simple("to-c2", svc="web", age=2, ann={
        NGX + "canary": "true", NGX + "canary-by-header": "x-c2",
        OURS + "target-cluster": "cluster2-beijing"})
    table, problems = build(main, can)
    assert problems == []
    d = decide(table, headers={"x-c2": "always"})
    assert d.backend == BackendRef("default", "web", 80, cluster="cluster2-beijing")
    assert d.canary and d.fallbacks == (BackendRef("default", "web", 80),)
    assert decide(table).backend == BackendRef("default", "web", 80)
    assert BackendRef("default", "web", 80, cluster="cluster2-beijing") in table.backends()


# -- MSE subsets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ann", "subset"), [
    ({MSE + "service-subset": "gray"}, (("opensergo.io/canary-gray", "gray"),)),
    ({MSE + "service-subset": "base"}, ()),
    ({MSE + "service-subset": ""}, ()),
    ({MSE + "service-subset": "c2", MSE + "subset-labels": "topology.istio.io/cluster cluster2"},
     (("topology.istio.io/cluster", "cluster2"),)),
    ({MSE + "service-subset": "v2", MSE + "subset-labels": "version v2\napp web"},
     (("app", "web"), ("version", "v2"))),
])
def test_service_subset_selects_pod_labels(ann, subset):
    table, problems = canary_table({NGX + "canary-weight": "100", **ann})
    assert problems == []
    assert decide(table).backend.subset == subset


@pytest.mark.parametrize(("ann", "annotation"), [
    ({MSE + "subset-labels": "version v2"}, "subset-labels"),  # needs service-subset
    ({MSE + "service-subset": "v2", MSE + "subset-labels": "just-a-key"}, "subset-labels"),
    ({NGX + "service-subset": "v2"}, "service-subset"),  # MSE-only key
])
def test_bad_subset_annotations_fall_back_to_the_whole_service(ann, annotation):
    table, problems = canary_table({NGX + "canary-weight": "100", **ann})
    assert problems_for(problems, "default/canary", annotation)
    assert decide(table).backend.subset == ()


# -- MSE destination -----------------------------------------------------------------------------


def dest_table(text: str, services: dict | None = None, seed: int = 3):
    ing = simple("main", svc="main", ann={MSE + "destination": text})
    return build(ing, services=services, seed=seed)


def test_destination_weighted_list():
    table, problems = dest_table("60% foo.default.svc.cluster.local:8080\n"
                                 "40% bar.team.svc.cluster.local:9090\n")
    assert problems == []
    counts = Counter(decide(table).backend for _ in range(10000))
    foo, bar = BackendRef("default", "foo", 8080), BackendRef("team", "bar", 9090)
    assert set(counts) == {foo, bar}
    assert abs(counts[foo] / 10000 - 0.6) < 0.03
    d = next(decide(table) for _ in range(100) if decide(table).backend == foo)
    assert d.fallbacks == (bar,)
    assert {foo, bar} <= set(table.backends())


@pytest.mark.parametrize(("text", "expected"), [
    ("web.default.svc.cluster.local:80", BackendRef("default", "web", 80)),  # no % => 100
    ("100% web.default.svc.cluster.local:80 cluster2-beijing",
     BackendRef("default", "web", 80, cluster="cluster2-beijing")),
    ("100% web.default.svc.cluster.local:80 gray",
     BackendRef("default", "web", 80, subset=(("opensergo.io/canary-gray", "gray"),))),
    ("100% web.default.svc:80 base", BackendRef("default", "web", 80)),
    ("100% web.default.svc.cluster.local", BackendRef("default", "web", 8080)),  # first port
])
def test_destination_line_forms(text, expected):
    services = {("default", "web"): {"spec": {"ports": [{"port": 8080}, {"port": 9090}]}}}
    table, problems = dest_table(text, services)
    assert problems == []
    assert decide(table).backend == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("60% a.default.svc.cluster.local:80\n30% b.default.svc.cluster.local:80", "add up to 90"),
    ("x% a.default.svc.cluster.local:80", "bad weight"),
    ("100% a.default:80", "not <service>.<namespace>"),
    ("100% a.default.svc.cluster.local:http", "bad port"),
    ("100% a.default.svc.cluster.local:80 sub extra", "expected"),
    ("100% unknown.default.svc.cluster.local", "not known"),
    ("100%", "expected"),
])
def test_bad_destination_is_ignored_with_a_problem(text, reason):
    table, problems = dest_table(text)
    msgs = problems_for(problems, "default/main", "destination")
    assert any(reason in m for m in msgs), msgs
    assert service_of(table) == "main"


def test_destination_is_mse_only_and_not_applied_on_a_canary():
    ing = simple("main", svc="main", ann={NGX + "destination": "a.default.svc.cluster.local:80"})
    table, problems = build(ing)
    assert any("MSE-only" in m for m in problems_for(problems, "default/main", "destination"))
    assert service_of(table) == "main"
    table, problems = canary_table({NGX + "canary-weight": "100",
                                    MSE + "destination": "a.default.svc.cluster.local:80"})
    assert any("canary" in m for m in problems_for(problems, "default/canary", "destination"))
    assert service_of(table) == "canary"


def test_canary_on_a_destination_route_falls_back_to_every_destination():
    main = simple("main", svc="main", age=1, ann={
        MSE + "destination": "50% a.default.svc.cluster.local:80\n"
                             "50% b.default.svc.cluster.local:80"})
    can = simple("can", svc="canary", age=2, ann={NGX + "canary": "true",
                                                  NGX + "canary-weight": "100"})
    table, problems = build(main, can)
    assert problems == []
    d = decide(table)
    assert d.backend.service == "canary"
    assert d.fallbacks == (BackendRef("default", "a", 80), BackendRef("default", "b", 80))


def test_rng_is_injectable_and_defaults_to_a_private_random():
    main = simple("main", svc="main", age=1)
    can = simple("can", svc="canary", age=2, ann={NGX + "canary": "true",
                                                  NGX + "canary-weight": "50"})
    t1, _ = build_route_table([main, can], [], BuildOptions(clusters=frozenset(CLUSTERS)),
                              rng=random.Random(5))
    t2, _ = build_route_table([main, can], [], BuildOptions(clusters=frozenset(CLUSTERS)),
                              rng=random.Random(5))
    assert [decide(t1).canary for _ in range(100)] == [decide(t2).canary for _ in range(100)]
    t3, _ = build_route_table([main, can], [])
    assert {decide(t3).canary for _ in range(200)} == {True, False}


def test_canary_rule_in_an_ingress_with_several_rules():
    main = ingress("main", rule("a.example.com", path("/", "main"), path("/api", "api")), age=1)
    can = ingress("can", rule("a.example.com", path("/api", "api-v2")), age=2,
                  ann={NGX + "canary": "true", NGX + "canary-by-header": "v2"})
    table, problems = build(main, can)
    assert problems == []
    assert service_of(table, p="/api/x", headers={"v2": "always"}) == "api-v2"
    assert service_of(table, p="/x", headers={"v2": "always"}) == "main"
