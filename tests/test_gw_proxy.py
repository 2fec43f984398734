"""Gateway data path: routing, forwarding, proxy headers, keep-alive, router swap, stop, hooks.

Real sockets on 127.0.0.1: aiohttp and raw clients in front, tiny HTTP servers behind."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from gwkit import REF, Env, FixedRouter, closed, decision, eventually, raw, read_response

from gateway.proxy import Limits
from gateway.proxy.heads import RequestIds
from gateway.types import BackendRef, Endpoint, Redirect


@pytest.fixture
async def env():
    e = Env()
    yield e
    await e.close()


async def test_forwards_and_reports_each_attempt(env: Env) -> None:
    await env.upstream("u1", "c1")
    await env.start()
    async with aiohttp.ClientSession() as s, s.get(env.url("/echo?x=1")) as r:
        assert r.status == 200
        body = await r.json()
    assert body["server"] == "u1" and body["path"] == "/echo?x=1" and body["method"] == "GET"
    assert [(e.cluster, o, st) for e, o, st in env.clusters.reports] == [("c1", "success", 200)]
    assert env.hooks.observed == [("default/web|/", "c1", 200)]
    assert env.backends[REF][0].active_requests == 0
    assert env.router.seen[0].host == "127.0.0.1" and env.router.seen[0].client_ip == "127.0.0.1"


async def test_no_route_is_404_with_short_body(env: Env) -> None:
    await env.upstream("u1")
    await env.start(("only.example", "/", decision()))
    async with aiohttp.ClientSession() as s:
        async with s.get(env.url("/"), headers={"Host": "other.example"}) as r:
            assert r.status == 404
            assert "no route" in await r.text()
        async with s.get(env.url("/"), headers={"Host": "Only.Example:8080"}) as r:
            assert r.status == 200  # host matched lower-cased, port stripped
    assert env.hooks.observed[0] == ("", "", 404)


async def test_local_answer_keeps_a_bodiless_connection_and_closes_one_with_a_body(env: Env) -> None:
    """A 404 to a GET leaves the connection usable (as nginx); a 404 to a POST whose body was
    not read closes it, or the body would be parsed as the next request."""
    await env.upstream("u1")
    await env.start(("only.example", "/", decision()))
    async with raw(env.port) as (rd, w):
        w.write(b"GET / HTTP/1.1\r\nHost: other\r\n\r\nGET / HTTP/1.1\r\nHost: only.example\r\n\r\n")
        assert (await read_response(rd)).status == 404
        assert (await read_response(rd)).status == 200
    async with raw(env.port) as (rd, w):
        w.write(b"POST / HTTP/1.1\r\nHost: other\r\nContent-Length: 10\r\n\r\n")
        assert (await read_response(rd)).status == 404
        assert await closed(rd)


async def test_no_endpoint_is_503_no_healthy_upstream(env: Env) -> None:
    up = await env.upstream("u1")
    env.backends[REF][0].ready = False
    await env.start()
    async with aiohttp.ClientSession() as s, s.get(env.url("/")) as r:
        assert r.status == 503
        assert (await r.text()).strip() == "no healthy upstream"
    assert up.requests == []


async def test_fallback_backend_when_primary_has_no_endpoint(env: Env) -> None:
    main = BackendRef("default", "main", 80)
    await env.upstream("main-pod", "c2", ref=main)
    await env.start(("*", "/", decision(BackendRef("default", "canary", 80), fallbacks=(main,))))
    async with aiohttp.ClientSession() as s, s.get(env.url("/")) as r:
        assert r.status == 200 and (await r.json())["server"] == "main-pod"


async def test_forwarded_headers_and_request_id(env: Env) -> None:
    await env.upstream("u1")
    await env.start()
    async with aiohttp.ClientSession() as s:
        async with s.get(env.url("/"), headers={
                "Host": "shop.example", "X-Forwarded-For": "10.0.0.1",
                "X-Forwarded-Proto": "https", "X-Real-IP": "6.6.6.6"}) as r:
            h = dict((await r.json())["headers"])
        async with s.get(env.url("/"), headers={"X-Request-ID": "abc-123"}) as r:
            h2 = dict((await r.json())["headers"])
    assert h["Host"] == "shop.example"
    assert h["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert h["X-Forwarded-Proto"] == "http"  # an untrusted client cannot claim https
    assert h["X-Real-IP"] == "127.0.0.1"
    assert h["X-Forwarded-Host"] == "shop.example"
    assert h["X-Forwarded-Port"] == str(env.port)
    assert re.fullmatch(r"[0-9a-f]{32}", h["X-Request-ID"])
    assert h2["X-Request-ID"] == "abc-123" and h2["X-Forwarded-For"] == "127.0.0.1"


def test_request_ids_are_32_hex_digits_and_do_not_repeat() -> None:
    ids = RequestIds()
    made = [ids.next() for _ in range(1000)]  # (several blocks of 256)
    assert all(re.fullmatch(rb"[0-9a-f]{32}", i) for i in made)
    assert len(set(made)) == 1000


async def test_trusted_peer_keeps_its_forwarded_headers(env: Env) -> None:
    await env.upstream("u1")
    await env.start(xff_trusted=["127.0.0.0/8"])
    async with aiohttp.ClientSession() as s, s.get(env.url("/"), headers={
            "X-Forwarded-Proto": "https", "X-Real-IP": "9.9.9.9"}) as r:
        h = dict((await r.json())["headers"])
    assert h["X-Forwarded-Proto"] == "https" and h["X-Real-IP"] == "9.9.9.9"
    assert h["X-Forwarded-Port"] == str(env.port)  # the ones it did not send are ours


async def test_upstream_host_and_set_headers(env: Env) -> None:
    await env.upstream("u1")
    await env.start(("*", "/", decision(upstream_host="internal.svc",
                                        set_headers=(("X-Env", "canary"),))))
    async with aiohttp.ClientSession() as s, s.get(env.url("/"), headers={"X-Env": "client"}) as r:
        hs = (await r.json())["headers"]
    assert dict(hs)["Host"] == "internal.svc"
    assert [v for k, v in hs if k.lower() == "x-env"] == ["canary"]


async def test_rewritten_path_goes_upstream(env: Env) -> None:
    """RouteDecision.path (rewrite-target) replaces the request-target sent upstream."""
    await env.upstream("u1")
    await env.start(("*", "/", decision(path="/inner/x?q=1")))
    async with aiohttp.ClientSession() as s, s.get(env.url("/outer/x?q=1")) as r:
        assert r.status == 200
        assert (await r.json())["path"] == "/inner/x?q=1"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_answered_by_the_proxy(env: Env, status: int) -> None:
    """RouteDecision.redirect: no upstream attempt, Location set, connection kept alive."""
    up = await env.upstream("u1")
    await env.start(("*", "/", decision(redirect=Redirect(status, "http://example.com/app\r\nX: y"))))
    async with raw(env.port) as (rd, w):
        for _ in range(2):  # the same connection serves both: a redirect does not close it
            w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            r = await read_response(rd)
            assert r.status == status
            assert r.header("location") == "http://example.com/appX: y"  # CR/LF never pass
            assert r.body.startswith(b"redirecting to ")
    assert up.requests == []


async def test_hop_by_hop_headers_stripped_both_ways(env: Env) -> None:
    await env.upstream("u1")
    await env.start()
    async with raw(env.port) as (r, w):
        w.write(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Private\r\n"
                b"X-Private: secret\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\n"
                b"TE: trailers, deflate\r\nTrailer: X-T\r\nX-Normal: 1\r\n\r\n")
        resp = await read_response(r)
        names = {k.lower(): v for k, v in resp.json()["headers"]}
        w.write(b"GET /hop HTTP/1.1\r\nHost: a\r\n\r\n")
        hop = await read_response(r)
    for gone in ("connection", "x-private", "keep-alive", "proxy-connection", "trailer"):
        assert gone not in names
    assert names["te"] == "trailers" and names["x-normal"] == "1"
    got = {k.lower() for k, _ in hop.headers}
    assert "x-kept" in got and hop.body == b"ok"
    assert not got & {"x-secret", "keep-alive", "proxy-connection", "trailer", "upgrade", "connection"}


async def test_keepalive_both_sides_reuses_one_upstream_connection(env: Env) -> None:
    up = await env.upstream("u1")
    await env.start()
    async with raw(env.port) as (r, w):
        for i in range(20):
            w.write(b"GET /echo?%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
            resp = await read_response(r)
            assert resp.status == 200 and resp.json()["path"] == f"/echo?{i}"
    assert up.conns_total == 1 and len(up.requests) == 20
    assert env.proxy is not None and env.proxy.pool.idle_count() == 1


async def test_head_request_has_no_body_and_connection_continues(env: Env) -> None:
    await env.upstream("u1")
    await env.start()
    async with raw(env.port) as (r, w):
        w.write(b"HEAD /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response(r, head_only=True)
        assert resp.status == 200 and int(resp.header("content-length") or 0) > 0
        w.write(b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response(r)
        assert resp.status == 201 and resp.body == b"u1 201\n"


async def test_absolute_form_target_uses_its_authority(env: Env) -> None:
    await env.upstream("u1")
    await env.start(("abs.example", "/", decision()))
    async with raw(env.port) as (r, w):
        w.write(b"GET http://abs.example:81/p?q=1 HTTP/1.1\r\nHost: ignored\r\n\r\n")
        resp = await read_response(r)
    body = resp.json()
    assert resp.status == 200 and body["path"] == "/p?q=1"
    assert dict(body["headers"])["Host"] == "abs.example:81"


async def test_router_swap_keeps_inflight_requests_and_connections(env: Env) -> None:
    await env.upstream("old")
    new_ref = BackendRef("default", "new", 80)
    await env.upstream("new", ref=new_ref)
    await env.start()
    assert env.proxy is not None
    async with raw(env.port) as (r, w), aiohttp.ClientSession() as s:
        w.write(b"GET /sleep/0.3 HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(0.1)
        env.proxy.router = FixedRouter([("*", "/", decision(new_ref, route_name="new"))])
        async with s.get(env.url("/echo")) as other:
            assert (await other.json())["server"] == "new"
        first = await read_response(r)
        assert first.status == 200 and first.body == b"old slept\n"
        w.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")  # same client connection, new table
        second = await read_response(r)
        assert second.json()["server"] == "new"


async def test_stop_finishes_inflight_then_refuses(env: Env) -> None:
    await env.upstream("u1")
    port = await env.start()
    assert env.proxy is not None
    async with raw(port) as (r, w), raw(port) as (r2, _w2):
        w.write(b"GET /sleep/0.3 HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(env.proxy.stop(grace=3))
        resp = await read_response(r)
        assert resp.status == 200 and resp.header("connection") == "close"
        assert await closed(r2)  # the idle connection was closed at once
        await stopping
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    env.proxy = None


async def test_connection_hooks_and_active_requests(env: Env) -> None:
    await env.upstream("u1")
    await env.start()
    ep: Endpoint = env.backends[REF][0]
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.get(env.url("/sleep/0.2")))
        await asyncio.sleep(0.1)
        assert ep.active_requests == 1
        async with await task as r:
            assert r.status == 200
    assert ep.active_requests == 0
    await asyncio.sleep(0.05)
    assert env.hooks.opened >= 1 and env.hooks.opened == env.hooks.closed


async def test_endpoint_change_keeps_inflight_and_applies_to_next_request(env: Env) -> None:
    old = await env.upstream("old")
    await env.start()
    async with raw(env.port) as (r, w):
        w.write(b"GET /sleep/0.2 HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(0.05)
        env.backends[REF].clear()  # the endpoint set changes under an in-flight request
        new = await env.upstream("new")
        resp = await read_response(r)
        assert resp.status == 200 and resp.body == b"old slept\n"
        w.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")  # same client connection
        assert (await read_response(r)).json()["server"] == "new"
    assert len(old.requests) == 1 and len(new.requests) == 1


async def _loop_cpu(seconds: float) -> float:
    """CPU time this thread (the event loop's) used while the loop ran for `seconds`."""
    t0 = time.thread_time()
    await asyncio.sleep(seconds)
    return time.thread_time() - t0


async def test_busy_poll_keeps_the_loop_polling_only_after_traffic(env: Env) -> None:
    """Limits.busy_poll: after a read the loop polls instead of blocking (it spends CPU while
    the window lasts), then blocks again; off by default."""
    await env.upstream("a")
    await env.start(limits=Limits(busy_poll=0.4))
    assert env.proxy is not None and not env.proxy._polling  # no traffic yet: the loop blocks
    async with aiohttp.ClientSession() as s, s.get(env.url("/")) as r:
        assert r.status == 200
    assert env.proxy._polling
    assert await _loop_cpu(0.25) > 0.02  # within the window: polling, not sleeping
    await eventually(lambda: not env.proxy._polling, within=2)  # no read for 0.4 s: blocks
    assert await _loop_cpu(0.2) < 0.1


async def test_no_busy_poll_by_default(env: Env) -> None:
    await env.upstream("a")
    await env.start()
    async with aiohttp.ClientSession() as s, s.get(env.url("/")) as r:
        assert r.status == 200
    assert env.proxy is not None and not env.proxy._polling
    assert await _loop_cpu(0.25) < 0.1
