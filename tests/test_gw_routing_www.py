"""from-to-www-redirect (gateway/routing/www.py): the other spelling of a host redirects to it,
as ingress-nginx's redirect servers do; table-driven through the route table, plus one run
through the real gateway."""

from __future__ import annotations

import aiohttp
import pytest
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import MSE, NGX, build, decide, ingress, path, problems_for, rule, simple

from gateway.types import Redirect

WWW = {NGX + "from-to-www-redirect": "true"}


@pytest.mark.parametrize("rule_host, request_host, target, headers, location", [
    # the rule host without www.: www.<host> redirects to it
    ("example.com", "www.example.com", "/a/b?q=1", {}, "http://example.com/a/b?q=1"),
    # one trailing "/" is dropped (ingress-nginx's redirect server), "/" becomes nothing
    ("example.com", "www.example.com", "/", {}, "http://example.com"),
    ("example.com", "www.example.com", "/dir/", {}, "http://example.com/dir"),
    ("example.com", "www.example.com", "/dir/?x=/", {}, "http://example.com/dir/?x="),
    # the rule host with www.: the bare host redirects to it
    ("www.example.com", "example.com", "/p", {}, "http://www.example.com/p"),
    # the port the client used is kept; the Host's case and a trailing dot do not matter
    ("example.com", "www.example.com", "/p", {"Host": "WWW.Example.com:8080"},
     "http://example.com:8080/p"),
    ("example.com", "www.example.com.", "/p", {}, "http://example.com/p"),
])
def test_redirects(rule_host, request_host, target, headers, location):
    table, problems = build(simple("site", rule_host, svc="web", ann=WWW))
    assert problems == []
    d = decide(table, request_host, target, headers)
    assert d is not None and d.redirect == Redirect(308, location)
    assert d.route_name == f"default/site|{request_host.rstrip('.')}/(from-to-www-redirect)"
    served = decide(table, rule_host, target)
    assert served is not None and served.redirect is None and served.backend.service == "web"


@pytest.mark.parametrize("ann", [{}, {NGX + "from-to-www-redirect": "false"}])
def test_off_by_default(ann):
    table, _ = build(simple("site", "example.com", ann=ann))
    assert decide(table, "www.example.com") is None


def test_the_mse_prefix_and_the_https_listener():
    table, problems = build(simple("site", "example.com", ann={MSE + "from-to-www-redirect": "true"}))
    assert problems == []
    assert decide(table, "www.example.com", "/x", scheme="https").redirect == Redirect(
        308, "https://example.com/x")
    assert decide(table, "www.example.com", "/x").redirect == Redirect(308, "http://example.com/x")


def test_a_host_with_its_own_rules_is_served_not_redirected():
    table, problems = build(simple("site", "example.com", svc="bare", ann=WWW, age=1),
                            simple("www", "www.example.com", svc="www", age=2))
    assert decide(table, "www.example.com").backend.service == "www"
    assert decide(table, "www.example.com").redirect is None
    assert problems_for(problems, "default/site", "from-to-www-redirect") == [
        "example.com: www.example.com has rules of its own, so it is served, not redirected"]


def test_an_exact_redirect_host_wins_over_a_wildcard_rule():
    table, problems = build(simple("site", "example.com", ann=WWW),
                            simple("wild", "*.example.com", svc="wild"))
    assert problems == []
    assert decide(table, "www.example.com").redirect == Redirect(308, "http://example.com")
    assert decide(table, "api.example.com").backend.service == "wild"


def test_every_rule_host_of_the_ingress_and_no_wildcard_or_hostless_rule():
    table, problems = build(ingress("multi", rule("a.org", path("/", "a")), rule("www.b.org", path("/", "b")),
                                    rule("*.c.org", path("/", "c")), rule(None, path("/", "any")),
                                    ann=WWW))
    assert problems == []
    assert decide(table, "www.a.org").redirect.location == "http://a.org"
    assert decide(table, "b.org").redirect.location == "http://www.b.org"
    assert decide(table, "www.c.org").backend.service == "c"  # the wildcard rule serves it
    assert decide(table, "elsewhere.org").backend.service == "any"


def test_a_canary_ingress_cannot_set_it():
    table, problems = build(simple("main", "example.com", svc="main", age=1),
                            simple("can", "example.com", svc="canary", age=2,
                                   ann={NGX + "canary": "true", NGX + "canary-weight": "0", **WWW}))
    assert decide(table, "www.example.com") is None
    assert problems_for(problems, "default/can", "from-to-www-redirect")


def test_a_bad_value_is_a_named_problem():
    table, problems = build(simple("site", "example.com", ann={NGX + "from-to-www-redirect": "yes please"}))
    assert problems_for(problems, "default/site", "from-to-www-redirect")
    assert decide(table, "www.example.com") is None
    assert decide(table, "example.com").backend.service == "main"


def test_routes_lists_the_redirects():
    table, _ = build(simple("site", "example.com", ann=WWW))
    assert table.describe_www() == [{
        "host": "www.example.com", "ingress": "default/site",
        "route": "default/site|www.example.com/(from-to-www-redirect)",
        "status": 308, "location": "$scheme://example.com$request_uri"}]


async def test_through_the_gateway_and_its_routes_page():
    """A real client asks the gateway for www.<host>: 308 to the bare host, nothing proxied;
    /routes lists the redirect."""
    ing = app_ingress("shop", "shop.example.com", "web", WWW)
    async with gateway_over([ing], "127.0.0.1", admin=True) as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}/dir/?q=1"
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers={"Host": "www.shop.example.com"}, allow_redirects=False) as r:
                assert r.status == 308
                assert r.headers["Location"] == "http://shop.example.com/dir/?q=1"
            async with s.get(url, headers={"Host": "shop.example.com"}) as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{app.admin_port}/routes") as r:
                routes = await r.json()
        assert [req.path for req in up.requests] == ["/dir/?q=1"]  # only the bare host's
        assert [w["host"] for w in routes["wwwRedirects"]] == ["www.shop.example.com"]
