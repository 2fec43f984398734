"""proxy-body-size (nginx client_max_body_size per Ingress): parsing, the data path over real
sockets (Content-Length and chunked bodies, over the gateway's own limit both ways), and one
run through the whole gateway."""

from __future__ import annotations

import aiohttp
import pytest
from gwkit import Env, decision, raw, read_response
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_proxy_hardening import rejected
from test_gw_routing_kit import MSE, NGX, decide, one

from gateway.proxy import Limits


@pytest.fixture
async def env():
    e = Env()
    yield e
    await e.close()


@pytest.mark.parametrize("value, limit", [
    ("8m", 8 << 20), ("8M", 8 << 20), ("512k", 512 << 10), ("1g", 1 << 30), ("100", 100),
    ("0", 0),  # no limit
])
def test_sizes(value, limit):
    table, problems, msgs = one({NGX + "proxy-body-size": value})
    assert msgs == []
    assert decide(table).max_body == limit


@pytest.mark.parametrize("value", ["8mb", "-1", "1.5m", "big"])
def test_bad_sizes_are_named_and_ignored(value):
    table, _, msgs = one({MSE + "proxy-body-size": value})
    assert any("is not a size" in m for m in msgs)
    assert decide(table).max_body == -1  # the gateway's own limit


async def test_content_length_over_the_route_limit_is_413(env: Env) -> None:
    up = await env.upstream("u1")
    await env.start(("*", "/", decision(max_body=100)))
    await rejected(env, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n", 413)
    async with raw(env.port) as (r, w):  # at the limit: proxied
        w.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
        assert (await read_response(r)).status == 200
    assert len(up.requests) == 1


async def test_chunked_body_over_the_route_limit_is_413(env: Env) -> None:
    await env.upstream("u1")
    await env.start(("*", "/", decision(max_body=100)))
    piece = b"40\r\n" + b"x" * 64 + b"\r\n"
    await rejected(env, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + piece * 2 + b"0\r\n\r\n", 413)


@pytest.mark.parametrize("route_limit", [0, 1000])
async def test_a_route_may_raise_or_lift_the_gateways_limit(env: Env, route_limit: int) -> None:
    await env.upstream("u1")
    await env.start(("big", "/", decision(max_body=route_limit)), ("*", "/", decision()),
                    limits=Limits(max_request_body=100))
    body = b"y" * 500
    async with raw(env.port) as (r, w):
        w.write(b"POST /echo HTTP/1.1\r\nHost: big\r\nContent-Length: 500\r\n\r\n" + body)
        assert (await read_response(r)).status == 200
    await rejected(env, b"POST / HTTP/1.1\r\nHost: small\r\nContent-Length: 500\r\n\r\n", 413)


async def test_through_the_gateway():
    ing = app_ingress("up", "up.example.com", "web", {NGX + "proxy-body-size": "1k"})
    async with gateway_over([ing], "127.0.75.1") as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}/upload"
        async with aiohttp.ClientSession() as s:
            async with s.post(url, data=b"z" * 1024, headers={"Host": "up.example.com"}) as r:
                assert r.status == 200
            async with s.post(url, data=b"z" * 1025, headers={"Host": "up.example.com"}) as r:
                assert r.status == 413
        assert len(up.requests) == 1
