"""allowlist-source-range / whitelist-source-range (gateway/routing/allow.py): table-driven
through the route table, plus one run through the real gateway."""

from __future__ import annotations

import aiohttp
import pytest
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import MSE, NGX, build, problems_for, simple

from gateway.types import Redirect, RequestView

ALLOW = NGX + "allowlist-source-range"


def ask(table, ip: str, headers: dict | None = None, host: str = "a.example.com", p: str = "/"):
    return table.route(RequestView("GET", p, host, {k.lower(): v for k, v in (headers or {}).items()},
                                   ip))


@pytest.mark.parametrize("value, ip, allowed", [
    ("10.0.0.0/8", "10.1.2.3", True),
    ("10.0.0.0/8", "11.0.0.1", False),
    ("10.0.0.0/8, 192.168.1.7", "192.168.1.7", True),  # a bare address is a /32
    ("10.0.0.0/8,192.168.1.7", "192.168.1.8", False),
    ("2001:db8::/32", "2001:db8::1", True),
    ("2001:db8::/32", "2001:db9::1", False),
    ("127.0.0.0/8", "::ffff:127.0.0.1", True),  # an IPv4-mapped peer counts as IPv4
    ("10.0.0.1/8", "10.9.9.9", True),  # host bits set: the network is meant (nginx's allow)
])
def test_allowed_and_denied(value, ip, allowed):
    table, problems = build(simple("site", svc="web", ann={ALLOW: value}))
    assert problems == []
    d = ask(table, ip)
    assert d is not None
    if allowed:
        assert d.deny == 0 and d.backend.service == "web"
    else:
        assert d.deny == 403 and d.mirrors == ()


@pytest.mark.parametrize("ann, ip, deny", [
    ({NGX + "whitelist-source-range": "10.0.0.0/8"}, "10.0.0.1", 0),  # the older name
    ({NGX + "whitelist-source-range": "10.0.0.0/8"}, "11.0.0.1", 403),
    ({MSE + "whitelist-source-range": "10.0.0.0/8"}, "11.0.0.1", 403),  # MSE's prefix
    ({ALLOW: "10.0.0.0/8", NGX + "whitelist-source-range": "11.0.0.0/8"}, "11.0.0.1", 403),  # allowlist wins
    ({}, "11.0.0.1", 0),  # no list: everyone
])
def test_names_and_prefixes(ann, ip, deny):
    table, _ = build(simple("site", ann=ann))
    assert ask(table, ip).deny == deny


def test_a_bad_entry_fails_closed_and_is_reported():
    table, problems = build(simple("site", ann={ALLOW: "10.0.0.0/8, not-a-cidr"}),
                            simple("other", "b.example.com"))
    assert any("not-a-cidr" in m and "denied" in m for m in problems_for(problems, "default/site", "allowlist-source-range"))
    assert ask(table, "10.0.0.1").deny == 403  # even an address of the good entry
    assert ask(table, "10.0.0.1", host="b.example.com").deny == 0  # other Ingresses unaffected


def test_redirects_answer_before_the_check():
    table, _ = build(simple("site", ann={ALLOW: "10.0.0.0/8",
                                         NGX + "permanent-redirect": "https://elsewhere.example"}))
    d = ask(table, "11.0.0.1")
    assert d.deny == 0 and d.redirect == Redirect(301, "https://elsewhere.example")


def test_canary_cannot_set_it_and_follows_the_main_list():
    table, problems = build(
        simple("main", svc="main", age=1, ann={ALLOW: "10.0.0.0/8"}),
        simple("can", svc="canary", age=2, ann={NGX + "canary": "true", NGX + "canary-weight": "100",
                                                ALLOW: "0.0.0.0/0"}))
    assert problems_for(problems, "default/can", "allowlist-source-range")
    assert ask(table, "11.0.0.1").deny == 403
    d = ask(table, "10.0.0.1")
    assert d.deny == 0 and d.backend.service == "canary"


def test_routes_shows_the_list():
    table, _ = build(simple("site", ann={ALLOW: "10.0.0.0/8,::1"}))
    [route] = table.describe()
    assert route["allowSourceRange"] == {"annotation": ALLOW, "allow": ["10.0.0.0/8", "::1/128"],
                                         "deny": []}


DENY = NGX + "denylist-source-range"


@pytest.mark.parametrize("ann, ip, deny", [
    ({DENY: "10.1.0.0/16"}, "10.1.2.3", 403),  # listed: denied
    ({DENY: "10.1.0.0/16"}, "10.2.0.1", 0),  # no allow list: everyone else
    ({DENY: "10.1.0.0/16", ALLOW: "10.0.0.0/8"}, "10.1.2.3", 403),  # deny first (nginx order)
    ({DENY: "10.1.0.0/16", ALLOW: "10.0.0.0/8"}, "10.2.0.1", 0),
    ({DENY: "10.1.0.0/16", ALLOW: "10.0.0.0/8"}, "11.0.0.1", 403),  # outside the allow list
    ({MSE + "denylist-source-range": "::1"}, "::1", 403),
])
def test_denylist(ann, ip, deny):
    table, problems = build(simple("site", ann=ann))
    assert problems == []
    assert ask(table, ip).deny == deny


def test_a_bad_denylist_entry_fails_closed():
    table, problems = build(simple("site", ann={DENY: "10.1.0.0/16, nope"}))
    assert problems_for(problems, "default/site", "denylist-source-range")
    assert ask(table, "192.168.0.1").deny == 403
    [route] = table.describe()
    assert route["allowSourceRange"]["allow"] == []


async def test_through_the_gateway():
    ings = [app_ingress("in", "in.example.com", "web", {ALLOW: "127.0.0.0/8"}),
            app_ingress("out", "out.example.com", "web", {ALLOW: "10.0.0.0/8"})]
    async with gateway_over(ings, "127.0.74.1") as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}/x"
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers={"Host": "in.example.com"}) as r:
                assert r.status == 200
            async with s.get(url, headers={"Host": "out.example.com"}) as r:
                assert r.status == 403 and "not allowed" in await r.text()
        assert len(up.requests) == 1
