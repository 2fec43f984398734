"""Host/path matching (digest section 3: H1-H5, P1-P10, D1-D2, D4), class selection,
merging of Ingresses for one host, use-regex."""

from __future__ import annotations

import pytest
from test_gw_routing_kit import (
    NGX,
    backend,
    build,
    decide,
    ingress,
    path,
    problems_for,
    rule,
    service_of,
    simple,
)

# -- paths: the Kubernetes docs' "Examples" table + conformance path_rules.feature -------

# (rules as (path, pathType), request path, matched rule index or None)
PATH_CASES = [
    ([("/", "Prefix")], "/anything/at/all", 0),  # P: '/' matches all paths
    ([("/foo", "Exact")], "/foo", 0),  # P1
    ([("/foo", "Exact")], "/bar", None),  # P1
    ([("/foo", "Exact")], "/foo/", None),  # P1
    ([("/foo", "Exact")], "/FOO", None),  # P1: case-sensitive
    ([("/foo/", "Exact")], "/foo", None),  # P5
    ([("/foo", "Prefix")], "/foo", 0),  # P2
    ([("/foo", "Prefix")], "/foo/", 0),  # P2
    ([("/foo", "Prefix")], "/FOO", None),  # P2: case-sensitive
    ([("/foo/", "Prefix")], "/foo", 0),  # P4: trailing slash of the rule ignored
    ([("/foo/", "Prefix")], "/foo/", 0),  # P4
    ([("/aaa/bb", "Prefix")], "/aaa/bbb", None),  # P3: element-wise
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb", 0),
    ([("/aaa/bbb/", "Prefix")], "/aaa/bbb", 0),  # P4
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/", 0),  # matches trailing slash
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", 0),  # subpath
    ([("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", None),  # not a string prefix (P10)
    ([("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", 1),  # P7 longest
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/aaa/bbb", 2),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/ccc", 0),
    ([("/aaa", "Prefix")], "/ccc", None),  # D2: no default -> 404
    ([("/foo", "Prefix"), ("/foo", "Exact")], "/foo", 1),  # P6: Exact wins the tie
    ([("/foo", "Exact"), ("/foo", "Prefix")], "/foo", 0),  # P6, either declaration order
    ([("/foo", "Exact"), ("/foo", "Prefix")], "/foo/x", 1),
    ([("/aaa/bbb", "Prefix"), ("/aaa", "Prefix")], "/aaa/bbb/ccc", 0),  # P3
    ([("/aaa/bbb", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", 1),  # P3
    ([("/aaa/bbb", "Prefix"), ("/aaa", "Prefix")], "/aaaccc", None),  # P3
    ([("/foo", "Prefix"), ("/foo/", "Prefix")], "/foo", 1),  # P4: longest rule path wins
    ([("/foo/", "Prefix"), ("/foo", "Prefix")], "/foo/", 0),
    ([("/foo", "ImplementationSpecific")], "/foo/bar", 0),  # P9: as Prefix
    ([("/foo", "ImplementationSpecific")], "/foobar", None),
    ([("/foo", "Prefix")], "/foo?x=/foo/bar", 0),  # P8: the query is not the path
    ([("/foo/bar", "Prefix")], "/foo?x=/foo/bar", None),  # P8
    ([("/a/b", "Exact")], "/a/b?q=1", 0),
    ([("/", "Prefix")], "/", 0),
]


@pytest.mark.parametrize(("rules", "request_path", "expected"), PATH_CASES)
def test_path_matching(rules, request_path, expected):
    paths = [path(p, f"svc{i}", t) for i, (p, t) in enumerate(rules)]
    table, problems = build(ingress("ing", rule("a.example.com", *paths)))
    assert problems == []
    got = service_of(table, "a.example.com", request_path)
    assert got == (None if expected is None else f"svc{expected}")


def test_implementation_specific_without_path_is_root():
    table, problems = build(ingress("ing", rule("a.example.com",
                                                path(None, "svc", "ImplementationSpecific"))))
    assert problems == []
    assert service_of(table, p="/x/y") == "svc"


@pytest.mark.parametrize(("p", "ptype", "reason"), [
    ("foo", "Prefix", "must start with '/'"),
    ("", "Exact", "must start with '/'"),
    ("/x", "Regex", "unknown pathType"),
])
def test_invalid_paths_are_reported_and_the_rest_served(p, ptype, reason):
    table, problems = build(ingress("ing", rule("a.example.com", path(p, "bad", ptype),
                                                path("/ok", "good"))))
    assert any(reason in m for m in problems_for(problems, "default/ing"))
    assert service_of(table, p="/ok") == "good"


# -- hosts -----------------------------------------------------------------------------------

HOST_CASES = [
    ("foo.bar.com", "foo.bar.com", True),  # H1
    ("foo.bar.com", "subdomain.bar.com", False),  # H1
    ("foo.bar.com", "FOO.Bar.COM", True),  # H3: case-insensitive
    ("foo.bar.com", "foo.bar.com:8080", True),  # H3: port stripped
    ("foo.bar.com", "foo.bar.com.", True),  # trailing dot of an FQDN
    ("*.foo.com", "bar.foo.com", True),  # H2
    ("*.foo.com", "baz.bar.foo.com", False),  # H2: exactly one label
    ("*.foo.com", "foo.com", False),  # H2
    ("*.foo.com", "Bar.FOO.com:443", True),
    ("*.foo.com", ".foo.com", False),
]


@pytest.mark.parametrize(("rule_host", "request_host", "matches"), HOST_CASES)
def test_host_matching(rule_host, request_host, matches):
    table, problems = build(simple("ing", rule_host))
    assert problems == []
    assert (service_of(table, request_host) == "main") is matches


@pytest.mark.parametrize("bad", ["*", "foo.*.com", "foo.com:80", "10.0.0.1", "fo_o.com",
                                 "*foo.com", "-a.com"])
def test_invalid_rule_hosts_are_ignored_with_a_problem(bad):
    table, problems = build(ingress("ing", rule(bad, path("/", "bad")),
                                    rule("ok.example.com", path("/", "good"))))
    assert any("rule host" in m for m in problems_for(problems, "default/ing"))
    assert service_of(table, "ok.example.com") == "good"
    assert service_of(table, bad.replace("*", "x")) is None


def test_hostless_rule_matches_every_host_and_requests_without_host():  # H4
    table, _ = build(simple("ing", None))
    for host in ("anything.example.org", "10.1.2.3", ""):
        assert service_of(table, host) == "main"


def test_precise_then_wildcard_then_hostless():  # H5
    table, problems = build(
        simple("exact", "a.foo.com", svc="exact"),
        simple("wild", "*.foo.com", svc="wild"),
        simple("any", None, svc="any"),
    )
    assert problems == []
    assert service_of(table, "a.foo.com") == "exact"
    assert service_of(table, "b.foo.com") == "wild"
    assert service_of(table, "c.bar.com") == "any"


def test_host_is_chosen_before_path_no_fallthrough_to_other_hosts():
    """As nginx server blocks / Envoy virtual hosts: a matched host whose paths miss is a
    404 (or that host's defaultBackend), never a host-less rule's path."""
    table, _ = build(simple("exact", "a.foo.com", "/api", svc="exact"),
                     simple("wild", "*.foo.com", "/", svc="wild"),
                     simple("any", None, "/", svc="any"))
    assert service_of(table, "a.foo.com", "/api/x") == "exact"
    assert service_of(table, "a.foo.com", "/other") is None


def test_host_with_no_paths_still_claims_the_host():
    bare = ingress("bare", {"host": "a.example.com"})
    table, _ = build(bare, simple("any", None, svc="any"))
    assert service_of(table, "a.example.com") is None
    assert service_of(table, "b.example.com") == "any"


# -- default backend (D1, D2, D4) ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(("host", "p"), [("a.example.com", "/"), ("", "/x/y"),
                                         ("other.org", "/deep/path?q=1")])
def test_default_backend_only_takes_everything(method, host, p):  # D1
    table, problems = build(ingress("dflt", default=backend("fallback", 8080)))
    assert problems == []
    decision = decide(table, host, p, method=method)
    assert decision is not None and decision.backend.service == "fallback"
    assert decision.backend.port == 8080


def test_unmatched_host_or_path_goes_to_default_backend_else_404():  # D2
    table, _ = build(simple("app", "a.example.com", "/api"))
    assert service_of(table, "a.example.com", "/web") is None
    assert service_of(table, "b.example.com", "/api") is None
    table, _ = build(simple("app", "a.example.com", "/api"),
                     ingress("dflt", default=backend("fallback")))
    assert service_of(table, "b.example.com", "/api") == "fallback"
    # A matched host with no matching path does not use another Ingress's catch-all.
    assert service_of(table, "a.example.com", "/web") is None


def test_default_backend_of_an_ingress_with_rules_serves_its_hosts_unmatched_paths():
    table, _ = build(ingress("app", rule("a.example.com", path("/api", "api")),
                             default=backend("app-default")))
    assert service_of(table, "a.example.com", "/api") == "api"
    assert service_of(table, "a.example.com", "/other") == "app-default"
    assert service_of(table, "b.example.com", "/other") is None


def test_oldest_rule_less_default_backend_wins_the_catch_all():
    table, problems = build(ingress("old", default=backend("old"), age=1),
                            ingress("new", default=backend("new"), age=2))
    assert service_of(table, "x.org") == "old"
    assert any("catch-all is already served by default/old" in m
               for m in problems_for(problems, "default/new"))


def test_resource_backend_is_ignored_with_a_problem():  # D4
    res = {"path": "/static", "pathType": "Prefix",
           "backend": {"resource": {"kind": "StorageBucket", "name": "b"}}}
    table, problems = build(ingress("ing", rule("a.example.com", res, path("/", "svc"))))
    assert any("resource backends" in m for m in problems_for(problems, "default/ing"))
    assert service_of(table, p="/static/x") == "svc"


def test_named_service_port_resolves_with_known_services():
    services = {("default", "svc"): {"spec": {"ports": [{"name": "http", "port": 8080}]}}}
    table, _ = build(ingress("ing", rule("a.example.com", path("/", "svc", port="http"))),
                     services=services)
    assert decide(table).backend.port == 8080
    table, _ = build(ingress("ing", rule("a.example.com", path("/", "svc", port="http"))))
    assert decide(table).backend.port == "http"


# -- class selection (item 1) -------------------------------------------------------------------

OUR_CLASS = {"metadata": {"name": "gw"}, "spec": {"controller": "amcs.dev/gateway"}}
OUR_DEFAULT = {"metadata": {"name": "gw", "annotations": {
    "ingressclass.kubernetes.io/is-default-class": "true"}},
    "spec": {"controller": "amcs.dev/gateway"}}
NGINX_DEFAULT = {"metadata": {"name": "nginx", "annotations": {
    "ingressclass.kubernetes.io/is-default-class": "true"}},
    "spec": {"controller": "k8s.io/ingress-nginx"}}

CLASS_CASES = [
    # (ingressClassName, legacy annotation, IngressClasses, accept_classless, served)
    ("amcs", None, [], False, True),  # our class name
    ("gw", None, [OUR_CLASS], False, True),  # an IngressClass with our controller
    ("gw", None, [], False, False),  # unknown class name
    ("nginx", None, [OUR_CLASS, NGINX_DEFAULT], False, False),  # someone else's class
    (None, "amcs", [], False, True),  # legacy annotation
    (None, "nginx", [OUR_DEFAULT], False, False),  # legacy annotation for another controller
    (None, None, [OUR_DEFAULT], False, True),  # no class: our default IngressClass
    (None, None, [NGINX_DEFAULT], False, False),  # no class: someone else's default
    (None, None, [OUR_CLASS], False, False),  # ours, but not marked default
    (None, None, [], False, False),
    (None, None, [], True, True),  # --watch-ingress-without-class
    ("nginx", None, [], True, False),
]


@pytest.mark.parametrize(("cls", "legacy", "classes", "classless", "served"), CLASS_CASES)
def test_ingress_class_selection(cls, legacy, classes, classless, served):
    ing = simple("ing", cls=cls, legacy_class=legacy)
    table, problems = build(ing, classes=classes, accept_classless=classless)
    assert problems == []
    assert (service_of(table) == "main") is served


# -- merging Ingresses for one host --------------------------------------------------------------


def test_ingresses_for_the_same_host_merge():
    table, problems = build(simple("a", p="/a", svc="svc-a"), simple("b", p="/b", svc="svc-b"))
    assert problems == []
    assert service_of(table, p="/a/1") == "svc-a"
    assert service_of(table, p="/b/1") == "svc-b"


@pytest.mark.parametrize("order", ["oldest_first", "newest_first"])
def test_duplicate_host_path_the_oldest_ingress_wins(order):
    old = simple("old", svc="old", age=10)
    new = simple("new", svc="new", age=20)
    ings = [old, new] if order == "oldest_first" else [new, old]
    table, problems = build(*ings)
    assert service_of(table) == "old"
    assert any("already served by default/old" in m for m in problems_for(problems,
                                                                           "default/new"))
    assert problems_for(problems, "default/old") == []


def test_same_timestamp_orders_by_namespace_then_name():
    table, _ = build(simple("b", svc="b", age=5), simple("a", svc="a", age=5))
    assert service_of(table) == "a"


def test_exact_and_prefix_of_the_same_path_are_not_duplicates():
    table, problems = build(simple("a", p="/x", svc="prefix"),
                            simple("b", p="/x", svc="exact", ptype="Exact"))
    assert problems == []
    assert service_of(table, p="/x") == "exact"
    assert service_of(table, p="/x/y") == "prefix"


# -- use-regex (P9) ---------------------------------------------------------------------------------


def test_use_regex_makes_host_paths_case_insensitive_anchored_regexes():
    table, problems = build(
        ingress("re", rule("a.example.com", path("/api/v[0-9]+", "api", "ImplementationSpecific")),
                ann={NGX + "use-regex": "true"}),
        ingress("plain", rule("a.example.com", path("/static", "static"),
                              path("/exact", "exact", "Exact"))),
        simple("other", "b.example.com", "/api", svc="b"),
    )
    assert problems == []
    assert service_of(table, p="/api/v2/users") == "api"
    assert service_of(table, p="/API/V10") == "api"
    assert service_of(table, p="/api/vx") is None
    # ingress-nginx: once a host uses regex, every path of the host is a regex (prefix-anchored)
    assert service_of(table, p="/STATIC") == "static"
    assert service_of(table, p="/staticfiles") == "static"
    assert service_of(table, p="/exact") == "exact"
    assert service_of(table, p="/exact/x") is None
    # other hosts keep element-wise prefix matching
    assert service_of(table, "b.example.com", "/apix") is None


def test_use_regex_longest_path_is_tried_first():
    table, _ = build(ingress("re", rule("a.example.com", path("/a", "short"),
                                        path("/a/b.*", "long")),
                             ann={NGX + "use-regex": "true"}))
    assert service_of(table, p="/a/bcd") == "long"
    assert service_of(table, p="/a/x") == "short"


def test_use_regex_invalid_pattern_is_reported_and_skipped():
    table, problems = build(ingress("re", rule("a.example.com", path("/a(", "bad"),
                                               path("/b", "good")),
                                    ann={NGX + "use-regex": "true"}))
    assert any("not a valid regex" in m for m in problems_for(problems, "default/re"))
    assert service_of(table, p="/b/x") == "good"
    assert service_of(table, p="/a(") is None


def test_host_default_backend_comes_from_the_oldest_ingress_that_has_one():
    table, problems = build(
        ingress("no-default", rule("a.example.com", path("/a", "a")), age=1),
        ingress("old", rule("a.example.com", path("/b", "b")), default=backend("old-dflt"), age=2),
        ingress("new", rule("a.example.com", path("/c", "c")), default=backend("new-dflt"), age=3),
    )
    assert problems == []
    assert service_of(table, p="/zzz") == "old-dflt"
    assert [service_of(table, p=x) for x in ("/a", "/b", "/c")] == ["a", "b", "c"]
