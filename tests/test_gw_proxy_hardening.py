"""Gateway data path: request smuggling, malformed input, limits and client timeouts.

Raw sockets only: real clients refuse to send these requests."""

from __future__ import annotations

import asyncio
import time

import pytest
from gwkit import Env, closed, decision, raw, read_response

from gateway.proxy import Limits
from gateway.types import Timeouts


@pytest.fixture
async def env():
    e = Env()
    yield e
    await e.close()


async def rejected(env: Env, data: bytes, status: int) -> None:
    """The proxy answers `status`, closes, and nothing reached the upstream."""
    async with raw(env.port) as (r, w):
        w.write(data)
        resp = await read_response(r)
        assert resp.status == status, resp
        assert resp.header("connection") == "close"
        assert await closed(r)


SMUGGLING = [
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="cl-and-te"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
                 b"0\r\n\r\n", 400, id="te-and-cl"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
                 400, id="duplicate-content-length"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 40\r\n\r\nabc", 400, id="cl-list"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
                 400, id="te-not-last-chunked"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                 501, id="te-unsupported-coding"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
                 400, id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n", 400, id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX\x01Bad: 1\r\n\r\n", 400, id="ctl-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400, id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", 400, id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="missing-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417, id="unknown-expect"),
    pytest.param(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405, id="connect"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, id="http2-version"),
]


@pytest.mark.parametrize(("data", "status"), SMUGGLING)
async def test_smuggling_and_malformed_heads_get_an_error_and_close(env: Env, data: bytes, status: int) -> None:
    up = await env.upstream("u1")
    await env.start()
    await rejected(env, data, status)
    assert up.requests == []


async def test_bad_chunk_size_mid_body_is_400_and_close(env: Env) -> None:
    up = await env.upstream("u1")
    await env.start()
    await rejected(env, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\nzz\r\nxx\r\n0\r\n\r\n", 400)
    await rejected(env, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabcdef\r\n0\r\n\r\n", 400)
    assert all(not r.body for r in up.requests)  # no (complete) request got through


async def test_pipelined_garbage_after_a_good_request(env: Env) -> None:
    await env.upstream("u1")
    await env.start()
    async with raw(env.port) as (r, w):
        w.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n")
        first = await read_response(r)
        second = await read_response(r)
        assert first.status == 200 and second.status == 400
        assert await closed(r)


async def test_header_limits(env: Env) -> None:
    await env.upstream("u1")
    await env.start(limits=Limits(max_header_count=20, max_header_size=4096, max_field_size=1024,
                                  max_request_line=512))
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    await rejected(env, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", 431)
    await rejected(env, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n", 431)
    await rejected(env, b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: " + b"v" * 900 + b"\r\n" * 1
                   + b"".join(b"X-B%d: " % i + b"v" * 900 + b"\r\n" for i in range(5)) + b"\r\n", 431)
    await rejected(env, b"GET /" + b"p" * 600 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414)
    # a header line that never ends is cut without waiting for its end
    async with raw(env.port) as (r, w):
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: " + b"v" * 10000)
        assert (await read_response(r)).status == 431


async def test_request_body_limit(env: Env) -> None:
    await env.upstream("u1")
    await env.start(limits=Limits(max_request_body=100))
    await rejected(env, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n", 413)


async def test_slowloris_header_timeout(env: Env) -> None:
    await env.upstream("u1")
    await env.start(limits=Limits(header_timeout=0.3, keepalive_timeout=5))
    async with raw(env.port) as (r, w):
        t0 = time.monotonic()
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
        for _ in range(3):  # trickling bytes does not extend the deadline
            await asyncio.sleep(0.1)
            w.write(b"X-A: b\r\n")
        resp = await read_response(r)
        assert resp.status == 408 and 0.25 < time.monotonic() - t0 < 1.0
        assert await closed(r)
    async with raw(env.port) as (r, w):  # a connection that never speaks is closed quietly
        assert await r.read() == b""


async def test_idle_keepalive_timeout(env: Env) -> None:
    await env.upstream("u1")
    await env.start(limits=Limits(header_timeout=5, keepalive_timeout=0.3))
    async with raw(env.port) as (r, w):
        w.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(r)).status == 200
        t0 = time.monotonic()
        assert await r.read() == b""  # closed quietly when idle
        assert 0.2 < time.monotonic() - t0 < 1.0


async def test_busy_connection_is_not_cut_by_client_timeouts(env: Env) -> None:
    await env.upstream("u1")
    await env.start(limits=Limits(header_timeout=0.2, keepalive_timeout=0.2))
    async with raw(env.port) as (r, w):
        w.write(b"GET /sleep/0.5 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(r)).status == 200


async def test_max_connections(env: Env) -> None:
    await env.upstream("u1")
    await env.start(limits=Limits(max_connections=2))
    async with raw(env.port) as (r1, w1), raw(env.port) as (_r2, _w2):
        await asyncio.sleep(0.05)
        async with raw(env.port) as (r3, _w3):
            resp = await read_response(r3)
            assert resp.status == 503 and await closed(r3)
        w1.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")  # the admitted ones still work
        assert (await read_response(r1)).status == 200


async def test_chunked_body_over_the_limit_is_413(env: Env) -> None:
    await env.upstream("u1")
    await env.start(limits=Limits(max_request_body=100))
    chunk = b"40\r\n" + b"x" * 64 + b"\r\n"
    await rejected(env, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + chunk * 2 + b"0\r\n\r\n", 413)


async def test_client_stalling_its_body_gets_408_and_the_upstream_is_not_blamed(env: Env) -> None:
    await env.upstream("u1")
    await env.start(("*", "/", decision(timeouts=Timeouts(send=0.2))))
    async with raw(env.port) as (r, w):
        w.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly some")
        resp = await read_response(r)
        assert resp.status == 408 and await closed(r)
    assert env.clusters.reports == []
