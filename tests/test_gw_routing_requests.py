"""nginx/MSE retry, timeout, mirror and header annotations, our mirror-cluster, problem
reporting and robustness, backends() and describe()."""

from __future__ import annotations

import json

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
    service_of,
    simple,
)

from gateway.types import BackendRef, HealthCheckPolicy, MirrorPolicy, RetryPolicy, Timeouts

# -- mirrors (item 11) -----------------------------------------------------------------------------

def test_mirror_cluster():
    table, _, msgs = one({OURS + "mirror-cluster": "cluster1-hangzhou",
                          OURS + "mirror-cluster-percentage": "25"})
    assert msgs == []
    target = BackendRef("default", "main", 80, cluster="cluster1-hangzhou")
    assert decide(table).mirrors == (MirrorPolicy(backend=target, percentage=25.0),)
    assert target in table.backends()


def test_nginx_mirror_target():
    table, _, msgs = one({NGX + "mirror-target": "http://127.0.0.1:9000$request_uri"})
    assert msgs == []
    assert decide(table).mirrors == (MirrorPolicy(url="http://127.0.0.1:9000$request_uri",
                                                  host="127.0.0.1:9000", shadow_suffix=False),)
    table, _, msgs = one({NGX + "mirror-target": "https://test.env.com$request_uri",
                          NGX + "mirror-host": "shadow.local",
                          NGX + "mirror-request-body": "off"})
    assert msgs == []
    assert decide(table).mirrors == (MirrorPolicy(url="https://test.env.com$request_uri",
                                                  host="shadow.local", shadow_suffix=False,
                                                  request_body=False),)


@pytest.mark.parametrize(("ann", "annotation"), [
    ({NGX + "mirror-target": "ftp://x$request_uri"}, "mirror-target"),
    ({NGX + "mirror-target": "$request_uri"}, "mirror-target"),
    ({NGX + "mirror-target": "http://m.local$request_uri?t=$request_time"}, "mirror-target"),
])
def test_bad_mirror_target(ann, annotation):
    table, problems, _ = one(ann)
    assert problems_for(problems, "default/ing", annotation)
    assert decide(table).mirrors == ()


def test_bad_mirror_host_falls_back_to_the_target_host():
    table, _, msgs = one({NGX + "mirror-target": "http://m.local/x",
                          NGX + "mirror-host": "not a host"})
    assert len(msgs) == 1 and decide(table).mirrors[0].host == "m.local"


@pytest.mark.parametrize(("value", "pct", "ref"), [
    ("shadow:8080", None, BackendRef("default", "shadow", 8080)),
    ("team/shadow:8080", "10", BackendRef("team", "shadow", 8080)),
    ("team/shadow", "250", BackendRef("team", "shadow", 7000)),  # first port; >=100 is all
])
def test_mse_mirror_target_service(value, pct, ref):
    ann = {MSE + "mirror-target-service": value}
    if pct is not None:
        ann[MSE + "mirror-percentage"] = pct
    services = {("team", "shadow"): {"spec": {"ports": [{"port": 7000}]}}}
    table, _, msgs = one(ann, services=services)
    assert msgs == []
    expected = 100.0 if pct is None else min(float(pct), 100.0)
    assert decide(table).mirrors == (MirrorPolicy(backend=ref, percentage=expected),)
    assert ref in table.backends()


@pytest.mark.parametrize(("ann", "annotation"), [
    ({MSE + "mirror-target-service": "unknown"}, "mirror-target-service"),
    ({MSE + "mirror-target-service": "a/b/c:80"}, "mirror-target-service"),
    ({NGX + "mirror-target-service": "shadow:80"}, "mirror-target-service"),  # MSE-only
    ({MSE + "mirror-target-service": "shadow:80", MSE + "mirror-percentage": "-3"},
     "mirror-percentage"),
])
def test_bad_mirror_target_service(ann, annotation):
    table, problems, _ = one(ann)
    assert problems_for(problems, "default/ing", annotation)
    mirrors = decide(table).mirrors
    assert all(m.percentage == 100.0 for m in mirrors)
    assert len(mirrors) == (1 if annotation == "mirror-percentage" else 0)


# -- retries and timeouts (item 9) -----------------------------------------------------------------

@pytest.mark.parametrize(("ann", "expected"), [
    ({}, RetryPolicy()),
    ({NGX + "proxy-next-upstream": "error timeout http_503"},
     RetryPolicy(on_statuses=(503,))),
    ({NGX + "proxy-next-upstream": "error,http_502,http_504,non_idempotent"},
     RetryPolicy(on_timeout=False, on_statuses=(502, 504), non_idempotent=True)),
    ({NGX + "proxy-next-upstream": "timeout"}, RetryPolicy(on_error=False)),
    ({NGX + "proxy-next-upstream": "off", NGX + "proxy-next-upstream-tries": "5"},
     RetryPolicy(attempts=1)),
    ({MSE + "proxy-next-upstream-tries": "2", MSE + "proxy-next-upstream-timeout": "3"},
     RetryPolicy(attempts=2, per_try_timeout=3.0)),
    ({NGX + "proxy-next-upstream-tries": "0"}, RetryPolicy(attempts=10)),
    ({OURS + "retry-on-status": "502,503,504"}, RetryPolicy(on_statuses=(502, 503, 504))),
    ({OURS + "retry-on-status": "503", NGX + "proxy-next-upstream": "error http_502"},
     RetryPolicy(on_timeout=False, on_statuses=(502, 503))),
    ({OURS + "retry-prefer-other-cluster": "false"}, RetryPolicy(prefer_other_cluster=False)),
])
def test_retry_annotations(ann, expected):
    table, _, msgs = one(ann)
    assert msgs == []
    assert decide(table).retry == expected


@pytest.mark.parametrize(("key", "value"), [
    (NGX + "proxy-next-upstream", "error sometimes"),
    (NGX + "proxy-next-upstream-tries", "-1"),
    (NGX + "proxy-next-upstream-timeout", "abc"),
    (OURS + "retry-on-status", "502,ok"),
    (OURS + "retry-on-status", "200"),
    (OURS + "retry-prefer-other-cluster", "maybe"),
])
def test_bad_retry_values_keep_defaults(key, value):
    table, _, msgs = one({key: value, NGX + "proxy-read-timeout": "9"})
    assert len(msgs) == 1
    d = decide(table)
    assert d.retry == RetryPolicy() and d.timeouts.read == 9.0


def test_timeouts():
    table, _, msgs = one({NGX + "proxy-connect-timeout": "2", NGX + "proxy-send-timeout": "30",
                          MSE + "proxy-read-timeout": "45s", MSE + "timeout": "20"})
    assert msgs == []
    assert decide(table).timeouts == Timeouts(connect=2.0, send=30.0, read=45.0, total=20.0)
    table, _, msgs = one({NGX + "proxy-connect-timeout": "0", NGX + "timeout": "5"})
    assert len(msgs) == 2 and decide(table).timeouts == Timeouts()


def test_upstream_vhost_and_request_header_control():
    table, _, msgs = one({NGX + "upstream-vhost": "backend.internal",
                          MSE + "request-header-control-add": "X-Env gray\nx-team web",
                          MSE + "request-header-control-update": "x-team platform"})
    assert msgs == []
    d = decide(table)
    assert d.upstream_host == "backend.internal"
    assert dict(d.set_headers) == {"x-env": "gray", "x-team": "platform"}
    table, _, msgs = one({MSE + "request-header-control-add": "novalue",
                          NGX + "upstream-vhost": "bad host!"})
    assert len(msgs) == 2
    assert decide(table).set_headers == () and decide(table).upstream_host is None


def test_canary_has_its_own_header_control():
    main = simple("main", svc="main", age=1, ann={MSE + "request-header-control-add": "x-a 1"})
    can = simple("can", svc="v2", age=2, ann={NGX + "canary": "true", NGX + "canary-weight": "100",
                                              MSE + "request-header-control-add": "x-b 2"})
    table, problems = build(main, can)
    assert problems == [] and decide(table).set_headers == (("x-b", "2"),)


# -- problems, conflicts, robustness (item 6) ----------------------------------------------------

@pytest.mark.parametrize(("key", "reason"), [
    (OURS + "cluster-weight", "unknown annotation"),  # typo of cluster-weights
    (NGX + "server-snippet", "not supported"),
    (NGX + "auth-snippet", "not supported"),
    (MSE + "some-future-thing", "not supported"),
    (NGX + "canary-by-cookie-value", "MSE-only"),
])
def test_unknown_and_unsupported_annotations_are_named(key, reason):
    table, _, msgs = one({key: "x"})
    assert any(reason in m for m in msgs)
    assert service_of(table) == "main"


def test_unrelated_annotations_are_not_reported():
    _, problems, _ = one({"kubectl.kubernetes.io/last-applied-configuration": "{}",
                          "example.com/anything": "x"})
    assert problems == []


def test_service_scoped_policy_conflicts_the_oldest_ingress_wins():
    old = simple("old", p="/a", svc="main", age=1, ann={NGX + "load-balance": "least_conn"})
    new = simple("new", p="/b", svc="main", age=2, ann={NGX + "load-balance": "random",
                                                        OURS + "health-check-path": "/hz"})
    table, problems = build(new, old)
    pol = table.backends()[MAIN]
    assert pol.algorithm == "least_conn"
    assert pol.health_check == HealthCheckPolicy(path="/hz")  # no conflict: merged
    msgs = problems_for(problems, "default/new", "load-balance")
    assert msgs and "default/old" in msgs[0]
    assert problems_for(problems, "default/old") == []


@pytest.mark.parametrize("garbage", [
    {"metadata": {"name": "g"}, "spec": ["not", "a", "dict"]},
    {"metadata": {"name": "g", "annotations": None}, "spec": {"ingressClassName": "amcs",
                                                               "rules": [{"http": "nope"}]}},
    {"metadata": {"name": "g"}, "spec": {"ingressClassName": "amcs", "rules": [None]}},
    {"spec": {"ingressClassName": "amcs", "rules": [{"host": 7, "http": {"paths": [{}]}}]}},
    {"metadata": {"name": "g"}, "spec": {"ingressClassName": "amcs",
                                         "defaultBackend": {"service": {"name": "x"}}}},
    "not even a dict",
])
def test_malformed_objects_never_break_the_table(garbage):
    good = simple("good", svc="main")
    table, problems = build(garbage, good)
    assert service_of(table) == "main"
    assert all(p.ingress != "default/good" for p in problems)


def test_malformed_ingress_classes_fall_back_to_the_class_name():
    table, problems = build(simple("good", svc="main"), classes=[{"spec": None}, "junk"])
    assert service_of(table) == "main" and problems


def test_problems_render_as_log_lines():
    _, problems, _ = one({OURS + "panic-threshold": "x"})
    assert str(problems[0]) == ("ingress default/ing annotation multicluster.amcs.dev/"
                                "panic-threshold: 'x' is not a number; ignored")


# -- backends() and describe() --------------------------------------------------------------------

def test_backends_cover_every_target():
    main = ingress("main", {"host": "a.example.com", "http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "main", "port": {
            "number": 80}}}}]}}, age=1, ann={MSE + "mirror-target-service": "shadow:80"},
        default={"service": {"name": "dflt", "port": {"number": 81}}})
    can = simple("can", svc="v2", age=2, ann={NGX + "canary": "true", NGX + "canary-weight": "5"})
    table, problems = build(main, can)
    assert problems == []
    assert set(table.backends()) == {MAIN, BackendRef("default", "v2", 80),
                                     BackendRef("default", "shadow", 80),
                                     BackendRef("default", "dflt", 81)}


def test_describe_is_json_and_shows_the_routes():
    main = simple("main", svc="main", age=1, ann={**HEADER, OURS + "health-check-path": "/hz",
                                                  NGX + "proxy-next-upstream": "error http_503"})
    can = simple("can", svc="v2", age=2, ann={NGX + "canary": "true", NGX + "canary-weight": "5"})
    dflt = ingress("dflt", default={"service": {"name": "dflt", "port": {"number": 80}}}, age=3)
    table, _ = build(main, can, dflt)
    routes = json.loads(json.dumps(table.describe()))
    assert [(r["host"], r["path"], r["pathType"]) for r in routes] == [
        ("*", "", "defaultBackend"), ("a.example.com", "/", "Prefix")]
    route = routes[1]
    assert route["ingress"] == "default/main"
    assert route["backends"][0]["backend"] == "default/main:80"
    assert route["backends"][0]["policy"]["healthCheck"]["path"] == "/hz"
    assert route["backends"][0]["policy"]["healthCheck"]["expectedStatuses"] == "200"
    assert route["canary"]["ingress"] == "default/can" and route["canary"]["weight"] == 5
    assert route["clusterRouting"]["header"] == "x-mcs-cluster"
    assert route["retry"]["on_statuses"] == [503]


def test_route_never_raises_on_odd_requests():
    table, _ = build(simple("ing", None, svc="main"))
    for host, p in [("", ""), ("[::1]:8080", "*"), ("a" * 300, "//x"), ("x:y:z", "?")]:
        decision = decide(table, host, p)
        assert decision is None or decision.backend.service == "main"
    assert service_of(table, "[::1]:8080", "/") == "main"
