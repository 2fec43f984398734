"""Gateway data path: streaming with flow control, chunked both ways, 100-continue, HTTP/1.0,
pipelining, trailers and WebSocket upgrades, with aiohttp, curl and raw sockets."""

from __future__ import annotations

import asyncio
import hashlib
import shutil

import aiohttp
import pytest
from aiohttp import web
from gwkit import REF, Env, closed, decision, raw, read_response

from gateway.types import Endpoint

MiB = 1 << 20


@pytest.fixture
async def env():
    e = Env()
    yield e
    await e.close()


def proxy_buffered(env: Env) -> int:
    """Bytes the proxy holds in user space: transport write buffers and pending bodies."""
    px = env.proxy
    assert px is not None
    total = sum(c.transport.get_write_buffer_size() for c in px.pool.live)
    for c in px.conns:
        total += c.transport.get_write_buffer_size()
        if c.exchange is not None:
            total += c.exchange.pending_size
    return total


async def test_large_upload_is_streamed_with_backpressure(env: Env) -> None:
    resume = asyncio.Event()
    stalled = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        got = 0
        while got < length:
            if got >= MiB and not resume.is_set():
                stalled.set()
                await resume.wait()
            got += len(await reader.read(65536))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(got)), got))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    env.backends[REF] = [Endpoint("c1", "127.0.0.1", server.sockets[0].getsockname()[1])]
    await env.start()
    total = 64 * MiB
    sent = 0
    async with raw(env.port) as (r, w):
        async def send() -> None:
            nonlocal sent
            w.write(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % total)
            block = b"b" * (256 * 1024)
            while sent < total:
                w.write(block)
                sent += len(block)
                await w.drain()
        sender = asyncio.create_task(send())
        await asyncio.wait_for(stalled.wait(), 5)
        await asyncio.sleep(0.3)
        assert proxy_buffered(env) <= 2 * MiB  # the proxy did not swallow the body
        assert sent < total // 2  # the client was paused (kernel buffers hold the rest)
        resume.set()
        await sender
        resp = await read_response(r)
    server.close()
    assert resp.status == 200 and int(resp.body) == total


async def test_large_download_is_streamed_with_backpressure(env: Env) -> None:
    up = await env.upstream("u1")
    await env.start()
    total = 64 * MiB
    async with raw(env.port) as (r, w):
        w.write(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % total)
        head = await r.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.4)  # a slow client
        assert up.sent_bytes < total // 2 and proxy_buffered(env) <= 2 * MiB
        assert b"Content-Length: %d" % total in head
        got = 0
        while got < total:
            got += len(await r.read(1 << 20))
    assert got == total


async def test_chunked_upload_and_chunked_response(env: Env) -> None:
    await env.upstream("u1")
    await env.start()
    pieces = [bytes([i]) * (1000 + i) for i in range(50)]

    async def gen():
        for p in pieces:
            yield p

    async with aiohttp.ClientSession() as s:
        async with s.post(env.url("/echo"), data=gen()) as r:
            body = await r.json()
        async with s.get(env.url("/chunked/5")) as r:
            assert r.headers["Transfer-Encoding"] == "chunked"
            assert await r.text() == "chunk0;chunk1;chunk2;chunk3;chunk4;"
    assert dict(body["headers"])["Transfer-Encoding"] == "chunked"
    assert body["body_sha"] == hashlib.sha256(b"".join(pieces)).hexdigest()


async def test_close_delimited_upstream_body_is_rechunked_for_keepalive(env: Env) -> None:
    await env.upstream("u1")
    await env.start()
    async with raw(env.port) as (r, w):
        w.write(b"GET /eof HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response(r)
        assert resp.body == b"until the end" and resp.header("transfer-encoding") == "chunked"
        w.write(b"GET /status/202 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(r)).status == 202


async def test_trailers_pass_through_chunked(env: Env) -> None:
    await env.upstream("u1")
    await env.start()
    async with raw(env.port) as (r, w):
        w.write(b"GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
        await r.readuntil(b"\r\n\r\n")
        rest = await r.readuntil(b"0\r\n")
        tail = await r.readuntil(b"\r\n\r\n")
    assert rest.endswith(b"hello\r\n0\r\n") and tail == b"X-Sum: 42\r\n\r\n"


async def test_http10_client(env: Env) -> None:
    await env.upstream("u1")
    await env.start()
    async with raw(env.port) as (r, w):  # no keep-alive asked: closed after the response
        w.write(b"GET /echo HTTP/1.0\r\n\r\n")
        resp = await read_response(r)
        assert resp.status == 200 and resp.json()["version"] == "HTTP/1.1"
        assert await closed(r)
    async with raw(env.port) as (r, w):  # keep-alive asked and a Content-Length: kept
        w.write(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = await read_response(r)
        assert resp.header("connection") == "keep-alive"
        w.write(b"GET /chunked/2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")  # chunked upstream: raw body, then close
        assert b"Transfer-Encoding" not in head and b"Connection: close" in head
        assert await r.read() == b"chunk0;chunk1;"


async def test_expect_100_continue_answered_by_the_proxy(env: Env) -> None:
    up = await env.upstream("u1")
    await env.start()
    async with raw(env.port) as (r, w):
        w.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        w.write(b"hello")
        resp = await read_response(r)
    assert resp.status == 200 and resp.json()["body_len"] == 5
    assert up.requests[0].header("expect") is None


async def test_expect_100_continue_without_route_gets_final_status_and_close(env: Env) -> None:
    await env.upstream("u1")
    await env.start(("only.example", "/", decision()))
    async with raw(env.port) as (r, w):
        w.write(b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        resp = await read_response(r)
        assert resp.status == 404 and resp.header("connection") == "close"
        assert await closed(r)


async def test_pipelined_requests_answered_in_order(env: Env) -> None:
    await env.upstream("u1")
    await env.start(("*", "/", decision()), ("nothing.example", "/", decision()))
    async with raw(env.port) as (r, w):
        w.write(b"GET /sleep/0.1 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /echo?last HTTP/1.1\r\nHost: a\r\n\r\n")
        a = await read_response(r)
        b = await read_response(r)
        c = await read_response(r)
        d = await read_response(r)
    assert a.body == b"u1 slept\n" and b.json()["body_len"] == 3
    assert c.status == 204 and d.json()["path"] == "/echo?last"


async def test_websocket_through_the_proxy(env: Env) -> None:
    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    env.backends[REF] = [Endpoint("c1", "127.0.0.1", port)]
    await env.start()
    try:
        async with aiohttp.ClientSession() as s, s.ws_connect(env.url("/ws")) as ws:
            for i in range(3):
                await ws.send_str(f"m{i}")
                assert (await ws.receive_str()) == f"echo:m{i}"
            big = "x" * 300_000
            await ws.send_str(big)
            assert (await ws.receive_str()) == "echo:" + big
    finally:
        await runner.cleanup()


async def test_raw_upgrade_splices_bytes_both_ways(env: Env) -> None:
    await env.upstream("u1")
    await env.start()
    async with raw(env.port) as (r, w):
        w.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: toy\r\n\r\nearly;")
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and b"Upgrade: toy" in head
        assert await r.readexactly(len(b"welcome;early;")) == b"welcome;early;"
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        w.write_eof()
        assert await closed(r)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_http10_chunked_upload_and_expect(env: Env, tmp_path) -> None:
    await env.upstream("u1")
    await env.start()
    payload = tmp_path / "payload"
    payload.write_bytes(b"0123456789" * 50_000)

    async def curl(*args: str) -> tuple[str, str]:
        p = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-v", "--max-time", "5", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await p.communicate()
        assert p.returncode == 0, err.decode()
        return out.decode(), err.decode()

    out, err = await curl("--http1.0", env.url("/chunked/3"))
    assert out == "chunk0;chunk1;chunk2;"
    out, err = await curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{payload}", env.url("/echo"))
    assert hashlib.sha256(payload.read_bytes()).hexdigest() in out
    out, err = await curl("-H", "Expect: 100-continue", "--data-binary", f"@{payload}", env.url("/echo"))
    assert "HTTP/1.1 100 Continue" in err and '"body_len": 500000' in out
