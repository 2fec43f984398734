"""enable-cors and the cors-* settings (gateway/routing/cors.py): parsing and origin
matching (table-driven), and the gateway answering preflights and adding the headers,
through real HTTP."""

from __future__ import annotations

import aiohttp
import pytest
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import MSE, NGX, decide, one

from gateway.routing.cors import DEFAULT_HEADERS, DEFAULT_METHODS, parse_cors
from gateway.routing.values import Annotations

ON = {NGX + "enable-cors": "true"}


def policy(ann: dict):
    problems: list = []
    return parse_cors(Annotations("default/x", ann, problems)), [p.message for p in problems]


def lines(raw: bytes) -> dict[str, str]:
    out = {}
    for line in raw.decode().split("\r\n"):
        if line:
            k, v = line.split(": ", 1)
            out[k] = v
    return out


def test_defaults_are_ingress_nginxs():
    p, problems = policy(ON)
    assert problems == []
    assert lines(p.headers(None, False)) == {
        "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": DEFAULT_METHODS,
        "Access-Control-Allow-Headers": DEFAULT_HEADERS, "Access-Control-Max-Age": "1728000"}
    assert lines(p.headers("https://a.example", True))["Content-Type"] == "text/plain charset=UTF-8"


@pytest.mark.parametrize("origins, origin, allowed", [
    ("https://app.example.com", "https://app.example.com", "https://app.example.com"),
    ("https://app.example.com", "HTTPS://APP.EXAMPLE.COM", "HTTPS://APP.EXAMPLE.COM"),
    ("https://app.example.com", "https://evil.example.com", None),
    ("https://app.example.com", "https://app.example.com.evil.org", None),  # the whole Origin
    ("https://app.example.com", None, None),
    ("https://*.example.com", "https://shop.example.com", "https://shop.example.com"),
    ("https://*.example.com", "https://a.b.example.com", None),  # one label
    ("https://*.example.com", "https://example.com", None),
    ("http://localhost:8080, https://app.example.com", "http://localhost:8080", "http://localhost:8080"),
    ("http://localhost:8080, https://app.example.com", "http://localhost:9090", None),
])
def test_origin_lists(origins, origin, allowed):
    p, problems = policy({**ON, NGX + "cors-allow-origin": origins})
    assert problems == []
    assert p.allow_origin(origin) == allowed
    assert (p.headers(origin, False) == b"") == (allowed is None)


@pytest.mark.parametrize("key, value", [
    ("cors-allow-origin", "not an origin"),
    ("cors-allow-methods", "GET; DROP TABLE"),
    ("cors-allow-headers", "X-Ok, Bad Header"),
])
def test_bad_values_are_named_and_the_default_used(key, value):
    p, problems = policy({**ON, NGX + key: value})
    assert any("not valid" in m for m in problems)
    assert p is not None and p.allow_origin("https://x.example") == "*"  # still on, defaults


def test_settings_without_enable_cors_are_reported():
    p, problems = policy({NGX + "cors-allow-origin": "https://a.example"})
    assert p is None and any("needs enable-cors" in m for m in problems)


def test_credentials_expose_and_max_age():
    p, problems = policy({**ON, MSE + "cors-allow-credentials": "false",
                          NGX + "cors-expose-headers": "X-Total, X-Page", NGX + "cors-max-age": "60"})
    assert problems == []
    got = lines(p.headers("https://a.example", False))
    assert "Access-Control-Allow-Credentials" not in got
    assert got["Access-Control-Expose-Headers"] == "X-Total, X-Page"
    assert got["Access-Control-Max-Age"] == "60"


def test_on_the_route_decision_and_routes_page():
    table, _, msgs = one({**ON, NGX + "cors-allow-origin": "https://a.example"})
    assert msgs == []
    d = decide(table)
    assert d.cors is not None and d.cors.allow_origin("https://a.example") == "https://a.example"
    assert table.describe()[0]["cors"]["allowOrigin"] == ["https://a.example"]


async def test_through_the_gateway():
    ing = app_ingress("api", "api.example.com", "web", {
        **ON, NGX + "cors-allow-origin": "https://app.example.com"})
    async with gateway_over([ing], "127.0.76.1") as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}"
        good = {"Host": "api.example.com", "Origin": "https://app.example.com"}
        bad = {"Host": "api.example.com", "Origin": "https://evil.example.com"}
        async with aiohttp.ClientSession() as s:
            # a preflight from an allowed origin: answered here, nothing proxied
            async with s.options(f"{url}/items", headers={
                    **good, "Access-Control-Request-Method": "PUT"}) as r:
                assert r.status == 204 and await r.read() == b""
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
                assert r.headers["Access-Control-Allow-Methods"] == DEFAULT_METHODS
                assert r.headers["Content-Length"] == "0"
            assert up.requests == []
            # an answer gets the headers, replacing the upstream's own
            async with s.get(f"{url}/acao", headers=good) as r:
                assert r.status == 200
                assert r.headers.getall("Access-Control-Allow-Origin") == ["https://app.example.com"]
                assert r.headers["Access-Control-Allow-Credentials"] == "true"
            # another origin: no CORS headers, its OPTIONS goes upstream like any request
            async with s.get(f"{url}/x", headers=bad) as r:
                assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
            async with s.options(f"{url}/x", headers=bad) as r:
                assert r.status == 200
        assert [q.method for q in up.requests] == ["GET", "GET", "OPTIONS"]
