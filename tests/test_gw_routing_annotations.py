"""Balancing and our multi-cluster annotations: cluster policy, health checks, outlier
detection, per-request cluster routing."""

from __future__ import annotations

import pytest
from test_gw_routing_kit import (
    HEADER,
    MAIN,
    MSE,
    NGX,
    OURS,
    build,
    decide,
    one,
    problems_for,
    simple,
)

from gateway.types import (
    BackendPolicy,
    BackendRef,
    HealthCheckPolicy,
    OutlierPolicy,
)


def policy(ann: dict) -> tuple[BackendPolicy, list[str]]:
    table, _, msgs = one(ann)
    return table.backends()[MAIN], msgs


# -- balancing (item 3) -----------------------------------------------------------------------

@pytest.mark.parametrize(("ann", "algorithm", "hash_by", "problem"), [
    ({}, "round_robin", None, False),
    ({NGX + "load-balance": "round_robin"}, "round_robin", None, False),
    ({NGX + "load-balance": "least_conn"}, "least_conn", None, False),
    ({MSE + "load-balance": "random"}, "random", None, False),
    ({NGX + "load-balance": "LEAST_CONN"}, "least_conn", None, False),
    ({NGX + "load-balance": "ewma"}, "ewma", None, False),
    ({MSE + "load-balance": "EWMA"}, "ewma", None, False),
    ({NGX + "load-balance": "fastest"}, "round_robin", None, True),
    ({NGX + "upstream-hash-by": "$request_uri"}, "hash", "$request_uri", False),
    ({NGX + "load-balance": "random", NGX + "upstream-hash-by": "$http_x_user"}, "hash",
     "$http_x_user", False),  # hash takes precedence
    ({MSE + "upstream-hash-by": "$arg_uid"}, "hash", "$arg_uid", False),
    ({NGX + "upstream-hash-by": "$remote_addr"}, "hash", "$remote_addr", False),
    ({NGX + "upstream-hash-by": "$host"}, "hash", "$host", False),
    ({NGX + "upstream-hash-by": "$host$request_uri"}, "hash", "$host$request_uri", False),
    ({NGX + "upstream-hash-by": "user-${cookie_uid}"}, "hash", "user-${cookie_uid}", False),
    ({NGX + "load-balance": "least_conn", NGX + "upstream-hash-by": "$server_name"},
     "least_conn", None, True),
    ({NGX + "upstream-hash-by": "constant"}, "round_robin", None, True),
    ({NGX + "upstream-hash-by": "$http_"}, "round_robin", None, True),
])
def test_balancing_annotations(ann, algorithm, hash_by, problem):
    pol, msgs = policy(ann)
    assert (pol.algorithm, pol.hash_by) == (algorithm, hash_by)
    assert bool(msgs) is problem


# -- our cluster policy annotations ---------------------------------------------------------------

def test_cluster_weights_and_priority_pools():
    pol, msgs = policy({OURS + "cluster-weights": "cluster1-beijing=50, cluster2-beijing=50",
                        OURS + "cluster-priority": "cluster1-beijing,cluster2-beijing;"
                                                   "cluster1-hangzhou",
                        OURS + "priority-spillover": "graded",
                        OURS + "overprovisioning-factor": "1.2",
                        OURS + "panic-threshold": "30"})
    assert msgs == []
    assert dict(pol.cluster_weights) == {"cluster1-beijing": 50, "cluster2-beijing": 50}
    assert pol.priority_pools == (("cluster1-beijing", "cluster2-beijing"),
                                  ("cluster1-hangzhou",))
    assert pol.graded_spillover is True
    assert pol.overprovisioning_factor == 1.2 and pol.panic_threshold == 30.0


def test_policy_defaults_when_nothing_is_set():
    pol, msgs = policy({})
    assert msgs == [] and pol == BackendPolicy()
    assert pol.health_check is None and pol.priority_pools == () and not pol.graded_spillover


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("cluster-weights", "cluster1-beijing:50", "expected <cluster>=<weight>"),
    ("cluster-weights", "cluster1-beijing=-5", "expected <cluster>=<weight>"),
    ("cluster-weights", "cluster1-beijing=0,cluster2-beijing=0", "weight > 0"),
    ("cluster-weights", "cluster1-bejing=50", "unknown cluster"),
    ("cluster-weights", "cluster1-beijing=1,cluster1-beijing=2", "listed twice"),
    ("cluster-priority", "cluster1-beijing;;cluster1-hangzhou", "empty priority pool"),
    ("cluster-priority", "cluster1-beijing;cluster1-beijing", "listed twice"),
    ("cluster-priority", "cluster9", "unknown cluster"),
    ("priority-spillover", "sometimes", "expected 'strict' or 'graded'"),
    ("overprovisioning-factor", "0.5", "out of range"),
    ("panic-threshold", "150", "out of range"),
    ("panic-threshold", "half", "not a number"),
])
def test_bad_cluster_policy_values_are_ignored_and_the_rest_applies(key, value, reason):
    other = (("health-check-path", "/ready") if key == "panic-threshold"
             else ("panic-threshold", "20"))
    pol, msgs = policy({OURS + key: value, OURS + other[0]: other[1]})
    assert any(reason in m for m in msgs), msgs
    default = BackendPolicy()
    assert pol.cluster_weights == default.cluster_weights
    assert pol.priority_pools == default.priority_pools
    assert pol.graded_spillover is False and pol.overprovisioning_factor == 1.4
    if key == "panic-threshold":
        assert pol.panic_threshold == 50.0 and pol.health_check.path == "/ready"
    else:
        assert pol.panic_threshold == 20.0  # the other annotation still applies


def test_cluster_names_are_not_validated_when_no_clusters_are_known():
    pol, msgs = policy({OURS + "cluster-weights": "new-cluster=1"})
    assert any("unknown cluster" in m for m in msgs) and dict(pol.cluster_weights) == {}
    table, problems = build(simple("ing", svc="main", ann={
        OURS + "cluster-weights": "new-cluster=1"}), clusters=())
    assert problems == [] and dict(table.backends()[MAIN].cluster_weights) == {"new-cluster": 1}


# -- health checks and outlier detection (items 7, 8, 10) ---------------------------------------

def test_health_check_annotations():
    pol, msgs = policy({OURS + "health-check-path": "/ready", OURS + "health-check-interval": "2",
                        OURS + "health-check-timeout": "500ms",
                        OURS + "health-check-healthy-threshold": "1",
                        OURS + "health-check-unhealthy-threshold": "2",
                        OURS + "health-check-host": "health.local",
                        OURS + "health-check-statuses": "200-204,304"})
    assert msgs == []
    assert pol.health_check == HealthCheckPolicy(
        path="/ready", interval=2.0, timeout=0.5, healthy_threshold=1, unhealthy_threshold=2,
        host="health.local", expected_statuses=(200, 201, 202, 203, 204, 304))


def test_any_health_check_annotation_enables_checks_with_defaults():
    pol, _ = policy({OURS + "health-check-interval": "1s"})
    assert pol.health_check == HealthCheckPolicy(interval=1.0)


@pytest.mark.parametrize(("key", "value"), [
    ("health-check-path", "ready"), ("health-check-interval", "0"),
    ("health-check-interval", "-1"), ("health-check-timeout", "soon"),
    ("health-check-healthy-threshold", "0"), ("health-check-unhealthy-threshold", "x"),
    ("health-check-statuses", "200-100"), ("health-check-statuses", "700"),
])
def test_bad_health_check_values(key, value):
    other = (("health-check-interval", "3") if key == "health-check-path"
             else ("health-check-path", "/hz"))
    pol, msgs = policy({OURS + key: value, OURS + other[0]: other[1]})
    assert len(msgs) == 1
    expected = HealthCheckPolicy(path="/hz") if key != "health-check-path" else \
        HealthCheckPolicy(interval=3.0)
    assert pol.health_check == expected


def test_outlier_annotations():
    pol, msgs = policy({OURS + "outlier-consecutive-5xx": "3",
                        OURS + "outlier-consecutive-gateway-failure": "2",
                        OURS + "outlier-base-ejection-time": "10",
                        OURS + "outlier-max-ejection-time": "1m",
                        OURS + "outlier-max-ejection-percent": "50",
                        OURS + "outlier-always-eject-one-host": "true",
                        OURS + "outlier-interval": "5"})
    assert msgs == []
    assert pol.outlier == OutlierPolicy(
        consecutive_5xx=3, consecutive_gateway_failure=2,
        enforcing_consecutive_gateway_failure=100, base_ejection_time=10.0,
        max_ejection_time=60.0, max_ejection_percent=50, always_eject_one_host=True,
        interval=5.0)


@pytest.mark.parametrize(("key", "value"), [("outlier-max-ejection-percent", "101"),
                                            ("outlier-always-eject-one-host", "maybe"),
                                            ("outlier-consecutive-5xx", "-1"),
                                            ("outlier-base-ejection-time", "x")])
def test_bad_outlier_values_keep_envoy_defaults(key, value):
    pol, msgs = policy({OURS + key: value})
    assert len(msgs) == 1 and pol.outlier == OutlierPolicy()


# -- per-request cluster routing -------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "cluster"), [
    ({"x-mcs-cluster": "cluster2-beijing"}, "cluster2-beijing"),
    ({"X-MCS-Cluster": " Cluster1-Hangzhou "}, "cluster1-hangzhou"),
    ({"x-mcs-cluster": "cluster9"}, None),  # unknown -> normal routing
    ({"x-mcs-cluster": ""}, None),
    ({}, None),  # absent -> normal routing
])
def test_cluster_header_routes_to_the_named_cluster(headers, cluster):
    table, _, msgs = one(HEADER)
    assert msgs == []
    d = decide(table, headers=headers)
    assert d.backend == BackendRef("default", "main", 80, cluster=cluster)
    assert d.fallbacks == ((MAIN,) if cluster else ())


def test_strict_cluster_routing_has_no_fallback():
    table, _, msgs = one({**HEADER, OURS + "strict-cluster-routing": "true"})
    assert msgs == []
    d = decide(table, headers={"x-mcs-cluster": "cluster1-beijing"})
    assert d.backend.cluster == "cluster1-beijing" and d.fallbacks == ()


def test_strict_cluster_routing_keeps_only_the_default_backend():
    services = {("default", "errors"): {"spec": {"ports": [{"port": 8080}]}},
                ("default", "main"): {"spec": {"ports": [{"port": 80}]}}}
    table, _, msgs = one({**HEADER, OURS + "strict-cluster-routing": "true",
                          NGX + "default-backend": "errors"}, services=services)
    assert msgs == []
    d = decide(table, headers={"x-mcs-cluster": "cluster1-beijing"})
    assert d.backend.cluster == "cluster1-beijing"
    assert d.fallbacks == (BackendRef("default", "errors", 8080),)
    # not strict: the unpinned backend first, the default backend last
    table, _, _ = one({**HEADER, NGX + "default-backend": "errors"}, services=services)
    d = decide(table, headers={"x-mcs-cluster": "cluster1-beijing"})
    assert d.fallbacks == (MAIN, BackendRef("default", "errors", 8080))


def test_cluster_header_match_rules_first_match_wins_after_cluster_header():
    table, _, msgs = one({**HEADER, OURS + "cluster-header-match":
                          "x-user-group=beta:cluster2-beijing,\nx-region=hz:cluster1-hangzhou"})
    assert msgs == []

    def cluster(headers: dict) -> str | None:
        return decide(table, headers=headers).backend.cluster

    assert cluster({"x-user-group": "beta"}) == "cluster2-beijing"
    assert cluster({"x-region": "hz"}) == "cluster1-hangzhou"
    assert cluster({"x-user-group": "beta", "x-region": "hz"}) == "cluster2-beijing"
    assert cluster({"x-user-group": "Beta"}) is None  # values are exact
    assert cluster({"x-user-group": "beta", "x-mcs-cluster": "cluster1-beijing"}) == \
        "cluster1-beijing"
    assert cluster({"x-user-group": "beta", "x-mcs-cluster": "nope"}) == "cluster2-beijing"


@pytest.mark.parametrize("value", ["x-user-group=beta", "x-user-group:cluster2-beijing",
                                   "x-user-group=beta:cluster7", "bad header=v:cluster1-beijing"])
def test_bad_cluster_header_match_is_ignored(value):
    table, _, msgs = one({OURS + "cluster-header-match": value})
    assert len(msgs) == 1
    assert decide(table, headers={"x-user-group": "beta"}).backend == MAIN


def test_cluster_routing_needs_known_clusters():
    table, problems = build(simple("ing", svc="main", ann=HEADER), clusters=())
    assert any("no member clusters" in m for m in problems_for(problems, "default/ing"))
    assert decide(table, headers={"x-mcs-cluster": "cluster1-beijing"}).backend == MAIN


def test_header_routing_applies_after_canary_choice():
    """Canary decides *what* (Service), the cluster header decides *where*."""
    main = simple("main", svc="main", age=1, ann=HEADER)
    can = simple("can", svc="v2", age=2, ann={NGX + "canary": "true", NGX + "canary-by-header":
                                              "x-canary"})
    table, problems = build(main, can)
    assert problems == []
    d = decide(table, headers={"x-canary": "always", "x-mcs-cluster": "cluster2-beijing"})
    assert d.canary and d.backend == BackendRef("default", "v2", 80, cluster="cluster2-beijing")
    assert d.fallbacks == (BackendRef("default", "v2", 80), MAIN)
    d = decide(table, headers={"x-mcs-cluster": "cluster2-beijing"})
    assert not d.canary and d.backend == BackendRef("default", "main", 80,
                                                    cluster="cluster2-beijing")


def test_pinned_backends_are_listed_without_cross_cluster_weights():
    table, _, msgs = one({**HEADER, OURS + "cluster-weights": "cluster1-beijing=1",
                          OURS + "health-check-path": "/hz"})
    assert msgs == []
    backends = table.backends()
    pinned = BackendRef("default", "main", 80, cluster="cluster1-hangzhou")
    assert pinned in backends and len(backends) == 4
    assert dict(backends[pinned].cluster_weights) == {}
    assert backends[pinned].health_check == HealthCheckPolicy(path="/hz")
    assert dict(backends[MAIN].cluster_weights) == {"cluster1-beijing": 1}


def test_target_cluster_on_a_main_ingress_pins_all_its_rules():
    table, _, msgs = one({OURS + "target-cluster": "cluster1-hangzhou"})
    assert msgs == []
    assert decide(table).backend == BackendRef("default", "main", 80, cluster="cluster1-hangzhou")
    table, _, msgs = one({OURS + "target-cluster": "nowhere"})
    assert any("unknown cluster" in m for m in msgs) and decide(table).backend == MAIN
