"""rewrite-target (+ x-forwarded-prefix), app-root and permanent/temporal redirects, as
ingress-nginx documents and builds them (see gateway/routing/rewrite.py)."""

from __future__ import annotations

import pytest
from test_gw_routing_kit import (
    MSE,
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

from gateway.types import Redirect

IS = "ImplementationSpecific"
HOST = {"Host": "a.example.com:8080"}


def rewritten(p: str, ptype: str, ann: dict, request: str) -> tuple[str | None, dict, list[str]]:
    """(upstream request-target or None, extra headers, problems) for one rule."""
    table, problems = build(ingress("rw", rule("a.example.com", path(p, "svc", ptype)), ann=ann))
    d = decide(table, p=request)
    assert d is not None and d.backend.service == "svc" and d.redirect is None
    return d.path, dict(d.set_headers), problems_for(problems, "default/rw")


# -- rewrite-target ------------------------------------------------------------------------------

@pytest.mark.parametrize(("p", "ptype", "target", "target_uri", "upstream"), [
    # ingress-nginx's documented examples
    ("/something(/|$)(.*)", IS, "/$2", "/something", "/"),
    ("/something(/|$)(.*)", IS, "/$2", "/something/", "/"),
    ("/something(/|$)(.*)", IS, "/$2", "/something/new", "/new"),
    ("/something/?(.*)", IS, "/$1", "/something/new", "/new"),
    # the query string is kept (nginx appends the original arguments)
    ("/something(/|$)(.*)", IS, "/$2", "/something/new?a=1&b", "/new?a=1&b"),
    # regex locations are case-insensitive, captures keep the request's case
    ("/something(/|$)(.*)", IS, "/$2", "/SOMETHING/New", "/New"),
    # the whole URI is replaced, not only the matched part
    ("/api", "Prefix", "/", "/api/users", "/"),
    ("/api", "Prefix", "/", "/api/users?q=1", "/?q=1"),
    ("/api(/|$)(.*)", "Prefix", "/v2/$2", "/api/users", "/v2/users"),
    ("/old", "Exact", "/new", "/old", "/new"),
    ("/old", "Exact", "/new", "/old?x=y", "/new?x=y"),
    # several captures, reordered; one digit after '$' ($12 is $1 then "2")
    ("/(a|b)/(c|d)", IS, "/$2/$1/$12", "/b/c", "/c/b/b2"),
    # a capture that did not participate expands to ""
    ("/x(/y)?(.*)", IS, "/z$1$2", "/x-tail", "/z-tail"),
])
def test_rewrite_target(p, ptype, target, target_uri, upstream):
    got, headers, msgs = rewritten(p, ptype, {NGX + "rewrite-target": target}, target_uri)
    assert (got, headers, msgs) == (upstream, {}, [])


@pytest.mark.parametrize(("prefix", "target_uri", "header"), [
    ("/something", "/something/new", "/something"),
    ("/$1", "/something/new", "/something"),  # captures of the same regex
    ("/base$3", "/something/new", "/basenew"),
])
def test_x_forwarded_prefix_goes_with_the_rewrite(prefix, target_uri, header):
    ann = {NGX + "rewrite-target": "/$3", NGX + "x-forwarded-prefix": prefix}
    got, headers, msgs = rewritten("/(something)(/|$)(.*)", IS, ann, target_uri)
    assert got == "/new"
    assert headers == {"X-Forwarded-Prefix": header}
    assert msgs == []


def test_x_forwarded_prefix_capture_beyond_the_groups_drops_only_the_header():
    ann = {NGX + "rewrite-target": "/$2", NGX + "x-forwarded-prefix": "/p$3"}
    got, headers, msgs = rewritten("/something(/|$)(.*)", IS, ann, "/something/new")
    assert (got, headers) == ("/new", {})
    assert len(msgs) == 1 and "$3" in msgs[0]


def test_x_forwarded_prefix_replaces_the_clients_and_header_control():
    table, problems = build(ingress(
        "rw", rule("a.example.com", path("/s(/|$)(.*)", "svc", IS)),
        ann={NGX + "rewrite-target": "/$2", NGX + "x-forwarded-prefix": "/s",
             MSE + "request-header-control-add": "x-forwarded-prefix /other\nx-env gray"}))
    d = decide(table, p="/s/a")
    assert problems == [] and d.path == "/a"
    assert d.set_headers == (("x-env", "gray"), ("X-Forwarded-Prefix", "/s"))


def test_rewrite_under_the_mse_prefix():
    got, _, msgs = rewritten("/app(/|$)(.*)", IS, {MSE + "rewrite-target": "/$2"}, "/app/x")
    assert (got, msgs) == ("/x", [])


def test_rewrite_turns_every_path_of_the_host_into_a_regex():
    table, problems = build(
        ingress("rw", rule("a.example.com", path("/a(/|$)(.*)", "rw", IS)),
                ann={NGX + "rewrite-target": "/$2"}),
        ingress("plain", rule("a.example.com", path("/static", "static"),
                              path("/exact", "exact", "Exact"))),
        simple("other", "b.example.com", "/static", svc="b"),
    )
    assert problems == []
    assert decide(table, p="/a/x").path == "/x"
    # ingress-nginx: the regex modifier is enforced on ALL paths of the host
    assert service_of(table, p="/STATIC") == "static"
    assert service_of(table, p="/staticfiles") == "static"
    assert decide(table, p="/static/x").path is None  # other Ingresses are not rewritten
    assert service_of(table, p="/exact") == "exact"
    assert service_of(table, p="/exact/x") is None
    # other hosts keep element-wise prefix matching
    assert service_of(table, "b.example.com", "/staticfiles") is None


def test_a_target_equal_to_the_path_is_no_rewrite_and_no_regex():
    table, problems = build(
        ingress("rw", rule("a.example.com", path("/api", "api")),
                ann={NGX + "rewrite-target": "/api"}),
        ingress("plain", rule("a.example.com", path("/static", "static"))))
    assert problems == []
    first, second = decide(table, p="/api/x"), decide(table, p="/api/y")
    assert first is second and first.path is None  # the shared static decision
    assert service_of(table, p="/staticfiles") is None  # still element-wise prefix matching


def test_the_target_applies_to_every_path_of_the_ingress():
    table, problems = build(
        ingress("rw", rule("a.example.com", path("/api", "api"), path("/static", "static")),
                ann={NGX + "rewrite-target": "/api"}))
    assert problems == []
    assert decide(table, p="/api/x").path is None
    assert decide(table, p="/static/x?v=1").path == "/api?v=1"
    assert service_of(table, p="/staticfiles") == "static"  # the host is in regex mode


def test_routes_without_rewrite_keep_the_shared_static_decision():
    table, _ = build(
        ingress("rw", rule("a.example.com", path("/a(.*)", "rw", IS)),
                ann={NGX + "rewrite-target": "/b$1"}),
        ingress("plain", rule("a.example.com", path("/p", "plain"))))
    assert decide(table, p="/p/1") is decide(table, p="/p/2")
    one, two = decide(table, p="/a1"), decide(table, p="/a2")
    assert (one.path, two.path) == ("/b1", "/b2")
    assert decide(table, p="/a1").path == "/b1"  # the prebuilt decision was not mutated


def test_canary_traffic_of_a_rewritten_rule_is_rewritten_too():
    main = ingress("main", rule("a.example.com", path("/s(/|$)(.*)", "main", IS)), age=1,
                   ann={NGX + "rewrite-target": "/$2", NGX + "x-forwarded-prefix": "/s"})
    can = ingress("can", rule("a.example.com", path("/s(/|$)(.*)", "v2", IS)), age=2,
                  ann={NGX + "canary": "true", NGX + "canary-by-header": "x-canary",
                       NGX + "rewrite-target": "/ignored"})
    table, problems = build(main, can)
    d = decide(table, p="/s/x", headers={"x-canary": "always"})
    assert (d.backend.service, d.canary, d.path) == ("v2", True, "/x")
    assert dict(d.set_headers) == {"X-Forwarded-Prefix": "/s"}
    assert decide(table, p="/s/x").backend.service == "main"
    # a canary's own rewrite-target is not applied (ingress-nginx: inherited from the main)
    assert any("canary" in m for m in problems_for(problems, "default/can", "rewrite-target"))


def test_rewrite_and_cluster_pinning_compose():
    table, _ = build(ingress("rw", rule("a.example.com", path("/s(/|$)(.*)", "main", IS)),
                             ann={NGX + "rewrite-target": "/$2",
                                  "multicluster.amcs.dev/cluster-header": "x-mcs-cluster"}))
    d = decide(table, p="/s/x", headers={"x-mcs-cluster": "cluster2-beijing"})
    assert (d.backend.cluster, d.path) == ("cluster2-beijing", "/x")


@pytest.mark.parametrize(("p", "ptype", "target", "served", "reason"), [
    ("/s", "Prefix", "", True, "empty value"),
    ("/s", "Prefix", "s/x", True, "starting with '/'"),
    ("/s", "Prefix", "/x?y=1", True, "starting with '/'"),
    ("/s", "Prefix", "/x y", True, "starting with '/'"),
    ("/s", "Prefix", "/$host", True, "nginx variables"),
    ("/s", "Prefix", "/$0", True, "nginx variables"),
    ("/s(.*)", IS, "/$2", True, "has 1 capture group"),
    ("/s", "Exact", "/$1", True, "has 0 capture group"),
    ("/s(", "Exact", "/x", True, "not a valid regex"),
    ("/s(", "Prefix", "/x", False, "not a valid regex"),  # regex mode drops the path
])
def test_bad_rewrite_values_are_named_problems(p, ptype, target, served, reason):
    table, problems = build(ingress("rw", rule("a.example.com", path(p, "svc", ptype),
                                               path("/ok", "ok")),
                                    ann={NGX + "rewrite-target": target}))
    msgs = problems_for(problems, "default/rw", "rewrite-target")
    assert any(reason in m for m in msgs), msgs
    d = decide(table, p=p)
    assert (d is not None) is served
    if d is not None:
        assert d.backend.service == "svc" and d.path is None
    assert service_of(table, p="/ok") == "ok"  # the Ingress keeps serving


def test_x_forwarded_prefix_needs_a_rewrite_target():
    got, headers, msgs = rewritten("/s", "Prefix", {NGX + "x-forwarded-prefix": "/s"}, "/s/x")
    assert (got, headers) == (None, {})
    assert any("without a valid rewrite-target" in m for m in msgs)


def test_rewrite_target_is_no_longer_reported_as_unsupported():
    _, _, msgs = rewritten("/s(.*)", IS, {NGX + "rewrite-target": "/x$1"}, "/s1")
    assert msgs == []


# -- permanent-redirect / temporal-redirect -----------------------------------------------------

URL = "https://www.example.org/landing"


@pytest.mark.parametrize(("ann", "expected", "problem_keys"), [
    ({NGX + "permanent-redirect": URL}, Redirect(301, URL), []),
    ({NGX + "permanent-redirect": URL, NGX + "permanent-redirect-code": "308"},
     Redirect(308, URL), []),
    ({NGX + "permanent-redirect": URL, NGX + "permanent-redirect-code": "418"},
     Redirect(301, URL), ["permanent-redirect-code"]),
    ({NGX + "permanent-redirect": URL, NGX + "permanent-redirect-code": "304"},
     Redirect(301, URL), ["permanent-redirect-code"]),
    ({NGX + "permanent-redirect": URL, NGX + "permanent-redirect-code": "x"},
     Redirect(301, URL), ["permanent-redirect-code"]),
    ({NGX + "temporal-redirect": URL}, Redirect(302, URL), []),
    ({NGX + "temporal-redirect": URL, NGX + "temporal-redirect-code": "307"},
     Redirect(307, URL), []),
    ({NGX + "temporal-redirect": URL, NGX + "temporal-redirect-code": "418"},
     Redirect(302, URL), ["temporal-redirect-code"]),
    ({NGX + "temporal-redirect": URL, NGX + "temporal-redirect-code": "308"},
     Redirect(302, URL), ["temporal-redirect-code"]),
    # both: temporal first (ingress-nginx's order); the permanent one is reported
    ({NGX + "temporal-redirect": URL, NGX + "permanent-redirect": "http://other.example"},
     Redirect(302, URL), ["permanent-redirect"]),
    # a bad temporal URL is dropped alone: the permanent one applies
    ({NGX + "temporal-redirect": "ftp://x.example", NGX + "permanent-redirect": URL},
     Redirect(301, URL), ["temporal-redirect"]),
    ({MSE + "permanent-redirect": URL}, Redirect(301, URL), []),
    ({NGX + "permanent-redirect": "ok.com"}, None, ["permanent-redirect"]),
    ({NGX + "permanent-redirect": "https://"}, None, ["permanent-redirect"]),
    ({NGX + "permanent-redirect": "https://x.example$request_uri"}, None,
     ["permanent-redirect"]),
    ({NGX + "permanent-redirect": "https://x.example/a b"}, None, ["permanent-redirect"]),
    ({NGX + "permanent-redirect": " "}, None, ["permanent-redirect"]),
    ({NGX + "permanent-redirect-code": "308"}, None, ["permanent-redirect-code"]),
    ({NGX + "temporal-redirect-code": "307"}, None, ["temporal-redirect-code"]),
])
def test_redirect_annotations(ann, expected, problem_keys):
    table, problems = build(simple("ing", p="/", svc="main", ann=ann))
    d = decide(table, p="/x")
    assert d is not None and d.backend.service == "main"
    assert d.redirect == expected
    assert sorted(p.annotation.rsplit("/", 1)[1] for p in problems) == sorted(problem_keys)


def test_every_request_of_the_ingress_is_redirected_and_others_are_not():
    table, problems = build(
        ingress("moved", rule("a.example.com", path("/old", "old"), path("/legacy", "legacy")),
                rule("b.example.com", path("/", "b")), default=backend("dflt"),
                ann={NGX + "permanent-redirect": URL}),
        simple("kept", p="/new", svc="new"))
    assert problems == []
    for host, p in [("a.example.com", "/old"), ("a.example.com", "/legacy/x?q=1"),
                    ("b.example.com", "/anything"), ("a.example.com", "/unmatched")]:
        assert decide(table, host, p, method="POST").redirect == Redirect(301, URL), (host, p)
    assert decide(table, p="/new").redirect is None
    # redirects are prebuilt: the static fast path returns the shared decision
    assert decide(table, p="/old") is decide(table, p="/old/2")


def test_redirects_are_not_mirrored():
    # nginx answers `return` in the rewrite phase, before the mirror subrequest
    mirror = {NGX + "mirror-target": "http://127.0.0.1:9$request_uri",
              "multicluster.amcs.dev/mirror-cluster": "cluster1-hangzhou"}
    table, problems = build(
        simple("moved", "a.example.com", ann={**mirror, NGX + "permanent-redirect": URL}),
        simple("ar", "b.example.com", ann={**mirror, NGX + "app-root": "/app"}))
    assert problems == []
    assert decide(table, p="/x").mirrors == ()
    assert decide(table, "b.example.com", "/").mirrors == ()
    assert len(decide(table, "b.example.com", "/x").mirrors) == 2


def test_the_catch_all_default_backend_is_never_redirected():
    # ingress-nginx: "Redirect and rewrite can affect the catch all behavior, skip for now"
    table, problems = build(ingress("catch", default=backend("dflt"),
                                    ann={NGX + "permanent-redirect": URL,
                                         NGX + "rewrite-target": "/x",
                                         NGX + "app-root": "/app"}))
    d = decide(table, "any.example.com", "/", HOST)
    assert d.backend.service == "dflt" and d.redirect is None and d.path is None
    assert sorted(p.annotation.rsplit("/", 1)[1] for p in problems) == [
        "app-root", "permanent-redirect", "rewrite-target"]
    assert all("catch-all" in p.message for p in problems)


def test_a_redirect_answers_before_the_rewrite():
    table, _ = build(ingress("both", rule("a.example.com", path("/s(.*)", "svc", IS)),
                             ann={NGX + "rewrite-target": "/x$1",
                                  NGX + "temporal-redirect": URL}))
    d = decide(table, p="/s1")
    assert d.redirect == Redirect(302, URL) and d.path is None


def test_canary_of_a_redirected_rule_is_redirected_and_its_own_redirect_ignored():
    main = simple("main", svc="main", age=1, ann={NGX + "permanent-redirect": URL})
    can = simple("can", svc="v2", age=2, ann={NGX + "canary": "true",
                                               NGX + "canary-weight": "100",
                                               NGX + "temporal-redirect": "http://c.example"})
    table, problems = build(main, can)
    assert decide(table).redirect == Redirect(301, URL)
    assert any("canary" in m for m in problems_for(problems, "default/can", "temporal-redirect"))


# -- app-root ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("target_uri", "headers", "location"), [
    ("/", HOST, "http://a.example.com:8080/app1"),  # $scheme://$http_host<app-root>
    ("/?a=b", HOST, "http://a.example.com:8080/app1"),  # $uri = / ; arguments dropped
    ("/", {"Host": "A.Example.com"}, "http://A.Example.com/app1"),  # as received
    ("/", {}, "http://a.example.com/app1"),  # no Host header: the request's host
    ("/x", HOST, None),
    ("/app1", HOST, None),
    ("//", HOST, None),
])
def test_app_root(target_uri, headers, location):
    table, problems = build(simple("ar", p="/", svc="main", ann={NGX + "app-root": "/app1"}))
    assert problems == []
    d = decide(table, p=target_uri, headers=headers)
    assert d is not None and d.backend.service == "main" and d.path is None
    assert d.redirect == (None if location is None else Redirect(302, location))


def test_app_root_is_host_wide_like_the_server_level_if():
    table, problems = build(
        ingress("ar", rule("a.example.com", path("/app", "app")), age=1,
                ann={NGX + "app-root": "/app/home", MSE + "permanent-redirect": URL}),
        ingress("root", rule("a.example.com", path("/", "root", "Exact"),
                             path("/", "rootp")), age=2),
        simple("other", "b.example.com", "/", svc="b"))
    assert problems == []
    assert decide(table, p="/", headers=HOST).redirect == Redirect(
        302, "http://a.example.com:8080/app/home")  # before the Exact "/" rule and the 301
    assert decide(table, p="/app/x").redirect == Redirect(301, URL)
    assert decide(table, p="/elsewhere").backend.service == "rootp"
    assert decide(table, "b.example.com", "/").redirect is None


def test_app_root_uses_the_listener_scheme():
    table, _ = build(simple("ar", ann={NGX + "app-root": "/app1"}))
    assert decide(table, p="/", headers=HOST, scheme="https").redirect.location == (
        "https://a.example.com:8080/app1")
    assert decide(table, p="/", headers=HOST).redirect.location == (
        "http://a.example.com:8080/app1")


def test_app_root_on_a_wildcard_and_a_hostless_rule():
    table, problems = build(
        simple("wild", "*.example.com", ann={NGX + "app-root": "/w"}),
        ingress("any", rule(None, path("/", "any")), ann={NGX + "app-root": "/h"}))
    assert problems == []
    assert decide(table, "x.example.com", "/", {"Host": "x.example.com"}).redirect.location == (
        "http://x.example.com/w")
    assert decide(table, "other.org", "/", {"Host": "other.org"}).redirect.location == (
        "http://other.org/h")
    # an HTTP/1.0 request without any Host: a relative Location
    assert decide(table, "", "/").redirect == Redirect(302, "/h")


def test_app_root_conflict_the_oldest_ingress_wins():
    table, problems = build(simple("new", p="/n", age=2, ann={NGX + "app-root": "/new"}),
                            simple("old", p="/o", age=1, ann={NGX + "app-root": "/old"}))
    assert decide(table, p="/", headers=HOST).redirect.location.endswith("/old")
    msgs = problems_for(problems, "default/new", "app-root")
    assert msgs and "default/old" in msgs[0]


@pytest.mark.parametrize("value", ["app1", "http://x.example/app1", "/a$1", "/a b", "/a?x=1"])
def test_bad_app_root_is_a_named_problem(value):
    table, problems = build(simple("ar", ann={NGX + "app-root": value}))
    assert problems_for(problems, "default/ar", "app-root")
    d = decide(table, p="/", headers=HOST)
    assert d.backend.service == "main" and d.redirect is None


def test_app_root_is_not_applied_from_a_canary():
    main = simple("main", svc="main", age=1)
    can = simple("can", svc="v2", age=2, ann={NGX + "canary": "true",
                                               NGX + "app-root": "/c"})
    table, problems = build(main, can)
    assert decide(table, p="/", headers=HOST).redirect is None
    assert problems_for(problems, "default/can", "app-root")


# -- /routes ------------------------------------------------------------------------------------

def test_describe_shows_rewrites_and_redirects():
    table, _ = build(
        ingress("rw", rule("a.example.com", path("/s(/|$)(.*)", "svc", IS)),
                ann={NGX + "rewrite-target": "/$2", NGX + "x-forwarded-prefix": "/s",
                     NGX + "app-root": "/s/home"}),
        simple("moved", "b.example.com", ann={NGX + "permanent-redirect": URL}))
    routes = {(r["host"], r["path"], r["pathType"]): r for r in table.describe()}
    rw = routes[("a.example.com", "/s(/|$)(.*)", IS)]
    assert rw["regex"] is True
    assert rw["rewrite"] == {"regex": "/s(/|$)(.*)", "target": "/$2", "xForwardedPrefix": "/s"}
    assert routes[("a.example.com", "/", "Exact")]["redirect"] == {
        "status": 302, "location": "$scheme://$http_host/s/home"}
    assert routes[("b.example.com", "/", "Prefix")]["redirect"] == {"status": 301,
                                                                    "location": URL}
