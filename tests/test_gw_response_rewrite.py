"""proxy-redirect-from/-to, proxy-cookie-domain, proxy-cookie-path
(gateway/routing/response_rewrite.py): the annotations and nginx's rewrite rules table-driven,
then a pod's redirect with cookies through the gateway to a real HTTP client."""

from __future__ import annotations

import aiohttp
import pytest
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import NGX, decide, one

from gateway.routing.response_rewrite import REWRITE_KEYS, ResponseRewriter
from gateway.routing.values import COMPATIBLE_KEYS

FROM, TO, DOMAIN, PATH = (NGX + k for k in ("proxy-redirect-from", "proxy-redirect-to",
                                            "proxy-cookie-domain", "proxy-cookie-path"))


def rewriter(ann: dict) -> tuple[ResponseRewriter | None, list[str]]:
    table, _, msgs = one(ann)
    d = decide(table)
    assert d is not None
    return d.response_rewrite, msgs


def headers(*lines: tuple[str, str]) -> list[bytes]:
    parts: list[bytes] = [b""]
    for name, value in lines:
        parts += [name.encode(), b": ", value.encode(), b"\r\n"]
    return parts


def rewritten(r: ResponseRewriter, name: str, value: str) -> str:
    return r.apply(headers((name, value)))[3].decode()


@pytest.mark.parametrize(("ann", "name", "value", "expected"), [
    # proxy_redirect: a prefix, case-sensitive; only the prefix changes
    ({FROM: "http://internal.svc:8080/", TO: "https://shop.example.com/"}, "Location",
     "http://internal.svc:8080/app?x=1", "https://shop.example.com/app?x=1"),
    ({FROM: "http://internal.svc:8080/", TO: "https://shop.example.com/"}, "location",
     "http://INTERNAL.svc:8080/app", "http://INTERNAL.svc:8080/app"),
    ({FROM: "http://internal.svc:8080/", TO: "/"}, "Location", "/relative", "/relative"),
    ({FROM: "http://internal.svc:8080/", TO: "https://shop.example.com/"}, "Refresh",
     "5; URL=http://internal.svc:8080/later", "5; URL=https://shop.example.com/later"),
    ({FROM: "http://internal.svc:8080/", TO: "https://shop.example.com/"}, "Refresh", "5", "5"),
    # a regex: from the start; the rest of the value becomes `to` with its groups
    ({FROM: r"~^http://[^/]+(/.*)$", TO: "https://shop.example.com$1"}, "Location",
     "http://10.0.0.7:8080/a/b", "https://shop.example.com/a/b"),
    ({FROM: r"~*^HTTP://([^:/]+):\d+/", TO: "https://$1/"}, "Location",
     "http://internal.svc:8080/a", "https://internal.svc/"),
    ({FROM: r"~^http://(x)?internal", TO: "[$1][$2]"}, "Location", "http://internal.svc/", "[][]"),
    # proxy_cookie_domain: the whole domain, case-insensitive, its leading dot kept
    ({DOMAIN: "internal.svc example.com"}, "Set-Cookie",
     "sid=1; Domain=.Internal.SVC; Path=/", "sid=1; Domain=.example.com; Path=/"),
    ({DOMAIN: "internal.svc example.com"}, "Set-Cookie",
     "sid=1; domain=sub.internal.svc", "sid=1; domain=sub.internal.svc"),
    ({DOMAIN: r"~\.?([a-z]+)\.svc$ $1.example.com"}, "Set-Cookie",
     "sid=1; domain=.internal.svc", "sid=1; domain=internal.example.com"),
    # proxy_cookie_path: a prefix
    ({PATH: "/app/ /"}, "Set-Cookie", "sid=1; Path=/app/x; HttpOnly", "sid=1; Path=/x; HttpOnly"),
    ({PATH: "/app/ /"}, "Set-Cookie", "sid=1; Path=/other", "sid=1; Path=/other"),
    ({PATH: "/app/ /", DOMAIN: "a.svc b.com"}, "Set-Cookie", "k=v; domain=A.svc;path=/app/",
     "k=v; domain=b.com;path=/"),
    ({PATH: "/app/ /"}, "Set-Cookie", "path=/app/; sid=1", "path=/app/; sid=1"),  # the cookie's own name
    # other headers pass
    ({FROM: "http://a/", TO: "http://b/", PATH: "/ /x"}, "Content-Location", "http://a/", "http://a/"),
])
def test_rewrites(ann, name, value, expected):
    r, msgs = rewriter(ann)
    assert msgs == [] and r is not None
    assert rewritten(r, name, value) == expected


def test_nothing_changed_is_the_same_list():
    r, _ = rewriter({FROM: "http://a/", TO: "http://b/"})
    parts = headers(("Location", "http://c/"), ("Set-Cookie", "a=b"))
    assert r.apply(parts) is parts
    changed = headers(("Location", "http://a/x"))
    assert r.apply(changed) is not changed and changed[3] == b"http://a/x"  # not mutated


@pytest.mark.parametrize(("ann", "problem"), [
    ({FROM: "off", TO: "http://b/"}, None),
    ({FROM: "default", TO: "http://b/"}, None),
    ({DOMAIN: "off", PATH: "OFF"}, None),
    ({FROM: "http://a/"}, "needs proxy-redirect-to; ignored"),
    ({TO: "http://b/"}, "needs proxy-redirect-from; ignored"),
    ({FROM: "http://a/", TO: "http://b/ x"}, "proxy-redirect-from and -to must have no spaces; ignored"),
    ({FROM: "~(", TO: "/"}, "'~(' is not a valid regex"),
    ({FROM: "http://a/", TO: "https://$host/"}, "nginx variables other than $1-$9 are not expanded here"),
    ({DOMAIN: "a.svc"}, "'a.svc': expected 'off' or '<from> <to>'; ignored"),
    ({PATH: "/a /b /c"}, "'/a /b /c': expected 'off' or '<from> <to>'; ignored"),
])
def test_settings_that_rewrite_nothing(ann, problem):
    r, msgs = rewriter(ann)
    assert r is None
    assert [m for m in msgs if problem and problem in m] == ([msgs[0]] if problem else []), msgs
    assert len(msgs) == (1 if problem else 0)


def test_the_keys_are_known():
    assert REWRITE_KEYS <= COMPATIBLE_KEYS


async def test_a_pods_redirect_and_cookies_reach_the_client_rewritten():
    ann = {FROM: "http://internal.svc:8080/app/", TO: "https://shop.example.com/",
           DOMAIN: "internal.svc shop.example.com", PATH: "/app/ /"}
    ings = [app_ingress("shop", "shop.example.com", "web", ann),
            app_ingress("plain", "plain.example.com", "web")]
    async with gateway_over(ings, "127.0.77.1") as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}/moved"
        async with aiohttp.ClientSession() as s:
            async with s.get(url, headers={"Host": "shop.example.com"}, allow_redirects=False) as r:
                assert r.status == 302
                assert r.headers["Location"] == "https://shop.example.com/next"
                assert r.headers["Refresh"] == "5; url=https://shop.example.com/later"
                assert r.headers.getall("Set-Cookie") == [
                    "sid=1; Domain=.shop.example.com; Path=/; HttpOnly", "theme=dark; path=/other"]
            async with s.get(url, headers={"Host": "plain.example.com"}, allow_redirects=False) as r:
                assert r.headers["Location"] == "http://internal.svc:8080/app/next"  # untouched
        routes = {r["ingress"]: r for r in app.table.describe()}
        assert routes["demo/shop"]["responseRewrite"] == {
            "redirect": {"from": "http://internal.svc:8080/app/", "to": "https://shop.example.com/"},
            "cookieDomain": {"from": "internal.svc", "to": "shop.example.com"},
            "cookiePath": {"from": "/app/", "to": "/"}}
        assert routes["demo/plain"]["responseRewrite"] is None
