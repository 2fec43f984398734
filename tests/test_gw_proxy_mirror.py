"""Gateway data path: fire-and-forget mirroring (backend and URL targets, -shadow host,
sampling, in-flight and body caps; a slow or dead mirror never touches the primary)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import pytest
from gwkit import Env, dead_endpoint, decision, eventually

from gateway.proxy import Limits
from gateway.proxy.mirror import LINES_PER_ADDRESS, parse_target, shadow_host
from gateway.types import BackendRef, Endpoint, MirrorPolicy

SHADOW = BackendRef("default", "shadow", 80)


@pytest.fixture
async def env():
    e = Env()
    yield e
    await e.close()


async def fetch(env: Env, path: str = "/echo", method: str = "GET", **kw: object) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, env.url(path), **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.read()


async def test_mirror_to_backend_gets_shadow_host_and_body(env: Env) -> None:
    await env.upstream("primary")
    shadow = await env.upstream("shadow", "c2", ref=SHADOW)
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),))))
    body = b"m" * 5000
    status, _ = await fetch(env, "/echo?a=1", "POST", data=body, headers={"Host": "shop.example:8080"})
    assert status == 200
    await eventually(lambda: len(shadow.requests) == 1)
    req = shadow.requests[0]
    assert req.path == "/echo?a=1" and req.method == "POST"
    assert req.header("host") == "shop.example-shadow:8080"
    assert req.body == body and req.header("x-forwarded-for") == "127.0.0.1"
    await eventually(lambda: env.hooks.mirrors == ["sent"])


async def test_each_copy_gets_the_shadow_host_of_its_own_request(env: Env) -> None:
    """Host values in turn, repeated and not: every copy's Host is its own request's + -shadow."""
    await env.upstream("primary")
    shadow = await env.upstream("shadow", "c2", ref=SHADOW)
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),))))
    hosts = ["a.example", "a.example", "b.example:81", "a.example", "[::1]:8080", "b.example:81"]
    for n, host in enumerate(hosts, 1):
        assert (await fetch(env, headers={"Host": host}))[0] == 200
        await eventually(lambda n=n: len(shadow.requests) == n)  # (so copies arrive in order)
    assert [r.header("host") for r in shadow.requests] == [
        "a.example-shadow", "a.example-shadow", "b.example-shadow:81", "a.example-shadow",
        "[::1]-shadow:8080", "b.example-shadow:81"]


async def test_bodiless_copy_has_the_primarys_header_lines_and_its_own_request_line(env: Env) -> None:
    """A copy without a body reuses the primary's header lines; its request line and Host stay
    the request's own even when the primary's were rewritten (rewrite-target, upstream-vhost)."""
    primary = await env.upstream("primary")
    shadow = await env.upstream("shadow", "c2", ref=SHADOW)
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),), path="/rewritten",
                                        upstream_host="vhost.internal",
                                        set_headers=(("X-Set", "by-route"),))))
    for method in ("GET", "DELETE"):
        status, _ = await fetch(env, "/orig?q=1", method, headers={"Host": "shop.example",
                                                                   "X-Custom": "kept", "Accept": "*/*"})
        assert status == 200
    await eventually(lambda: len(shadow.requests) == 2)
    for p, c, method in zip(primary.requests, shadow.requests, ("GET", "DELETE"), strict=True):
        assert (p.method, p.path, p.header("host")) == (method, "/rewritten", "vhost.internal")
        assert (c.method, c.path, c.header("host")) == (method, "/orig?q=1", "shop.example-shadow")
        assert [k.lower() for k, _ in c.headers].count("host") == 1
        assert c.header("content-length") is None and c.body == b""
        own = ("host", "content-length")  # a copy without a body has no Content-Length: 0
        assert [h for h in c.headers if h[0].lower() not in own] == \
            [h for h in p.headers if h[0].lower() not in own]  # the same lines, in the same order
        assert c.header("x-custom") == "kept" and c.header("x-set") == "by-route"
        assert c.header("x-request-id") and c.header("x-forwarded-for") == "127.0.0.1"


async def test_mirror_url_target_with_request_uri_and_host_override(env: Env) -> None:
    await env.upstream("primary")
    shadow = await env.upstream("shadow", "c2", ref=SHADOW)
    url = f"http://127.0.0.1:{shadow.port}/copy$request_uri&m=${{request_method}}&a=$arg_q"
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(url=url, host="mirror.example"),))))
    chunks = [b"a" * 3000, b"b" * 3000]

    async def gen():
        for c in chunks:
            yield c

    assert (await fetch(env, "/orig?q=1", "PUT", data=gen()))[0] == 200
    await eventually(lambda: len(shadow.requests) == 1)
    req = shadow.requests[0]
    assert req.path == "/copy/orig?q=1&m=PUT&a=1" and req.header("host") == "mirror.example"
    assert req.header("content-length") == "6000" and req.body == b"".join(chunks)


async def test_slow_or_dead_mirror_never_delays_or_fails_the_primary(env: Env) -> None:
    await env.upstream("primary")
    slow = await env.upstream("slow", "c2", ref=SHADOW)
    slow.default_status = 500
    slow.delay = 1.0
    dead = BackendRef("default", "dead", 80)
    env.backends[dead] = [dead_endpoint()]
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW), MirrorPolicy(backend=dead)))),
                    limits=Limits(mirror_timeout=0.5))
    t0 = time.monotonic()
    for _ in range(3):
        status, body = await fetch(env)
        assert status == 200 and b'"server": "primary"' in body
    assert time.monotonic() - t0 < 0.5
    await eventually(lambda: sorted(env.hooks.mirrors) == ["failed"] * 6, within=3)
    assert [o for _, o, _ in env.clusters.reports] == ["success"] * 3  # mirrors report nothing


async def test_mirror_in_flight_cap_drops_mirrors_not_primaries(env: Env) -> None:
    await env.upstream("primary")
    slow = await env.upstream("slow", "c2", ref=SHADOW)
    slow.delay = 0.4
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),))),
                    limits=Limits(max_mirrors_in_flight=2))
    results = await asyncio.gather(*(fetch(env) for _ in range(6)))
    assert [s for s, _ in results] == [200] * 6
    await eventually(lambda: sorted(env.hooks.mirrors) == ["dropped"] * 4 + ["sent"] * 2, within=3)
    assert len(slow.requests) == 2
    assert env.proxy is not None and env.proxy.mirror.in_flight == 0


async def test_mirror_body_cap(env: Env) -> None:
    await env.upstream("primary")
    shadow = await env.upstream("shadow", "c2", ref=SHADOW)
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),))),
                    limits=Limits(max_mirror_body=1000))
    big, small = b"B" * 2000, b"s" * 500

    async def gen(data: bytes):
        yield data[:700]
        yield data[700:]

    assert (await fetch(env, "/echo", "POST", data=big))[0] == 200  # known too long: dropped
    status, body = await fetch(env, "/echo", "POST", data=gen(big))  # found too long while streaming
    assert status == 200 and hashlib.sha256(big).hexdigest().encode() in body
    assert (await fetch(env, "/echo", "POST", data=small))[0] == 200
    await eventually(lambda: len(env.hooks.mirrors) == 3)
    assert sorted(env.hooks.mirrors) == ["dropped", "dropped", "sent"]
    assert [r.body for r in shadow.requests] == [small]


async def test_mirror_percentage_and_no_body(env: Env) -> None:
    await env.upstream("primary")
    shadow = await env.upstream("shadow", "c2", ref=SHADOW)
    other = BackendRef("default", "other", 80)
    never = await env.upstream("never", "c2", ref=other)
    await env.start(("*", "/", decision(mirrors=(
        MirrorPolicy(backend=SHADOW, request_body=False, shadow_suffix=False),
        MirrorPolicy(backend=other, percentage=0.0)))))
    for _ in range(5):
        assert (await fetch(env, "/echo", "POST", data=b"body"))[0] == 200
    await eventually(lambda: len(shadow.requests) == 5)
    assert never.requests == []
    assert all(r.body == b"" and r.header("content-length") is None for r in shadow.requests)
    assert shadow.requests[0].header("host") == f"127.0.0.1:{env.port}"


async def test_copies_are_pipelined_on_few_connections(env: Env) -> None:
    """Concurrent copies to one address share a few mirror lines (not a connection each),
    every copy arrives whole, and each response completes one copy."""
    await env.upstream("primary")
    shadow = await env.upstream("shadow", "c2", ref=SHADOW)
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),))))
    bodies = [f"copy-{i}-".encode() * (i + 1) for i in range(40)]
    conn = aiohttp.TCPConnector(limit=40)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one(body: bytes) -> int:
            async with s.post(env.url("/echo"), data=body) as r:
                await r.read()
                return r.status
        assert await asyncio.gather(*(one(b) for b in bodies)) == [200] * 40
    await eventually(lambda: env.hooks.mirrors.count("sent") == 40, within=3)
    assert sorted(r.body for r in shadow.requests) == sorted(bodies)
    assert 1 <= shadow.conns_total <= LINES_PER_ADDRESS
    assert env.proxy is not None and env.proxy.mirror.in_flight == 0


async def test_shadow_closing_after_each_response_gets_one_copy_per_connection(env: Env) -> None:
    await env.upstream("primary")
    shadow = await env.upstream("shadow", "c2", ref=SHADOW)
    shadow.keepalive = False
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),))))
    assert (await fetch(env))[0] == 200  # the first answer says close: no more pipelining there
    await eventually(lambda: env.hooks.mirrors == ["sent"])
    results = await asyncio.gather(*(fetch(env) for _ in range(10)))  # concurrent copies
    assert [status for status, _ in results] == [200] * 10
    await eventually(lambda: len(env.hooks.mirrors) == 11, within=3)
    assert env.hooks.mirrors == ["sent"] * 11 and len(shadow.requests) == 11
    assert shadow.conns_total == 11
    assert env.proxy is not None and env.proxy.mirror.in_flight == 0


async def test_shadow_with_a_request_limit_per_connection_keeps_pipelined_lines(env: Env) -> None:
    """A shadow that closes a connection after N requests (nginx's keepalive_requests, 1000 by
    default) is not one that closes after each: its lines learn N and are replaced before
    reaching it, so copies stay pipelined and none is lost past the limit."""
    await env.upstream("primary")
    shadow = await env.upstream("shadow", "c2", ref=SHADOW)
    shadow.max_requests = 10
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),))))
    for i in range(12):  # the 10th answer says close
        assert (await fetch(env))[0] == 200
        await eventually(lambda n=i + 1: len(env.hooks.mirrors) == n)  # (one copy at a time)
    assert env.hooks.mirrors == ["sent"] * 12
    before = shadow.conns_total
    assert before == 2
    conn = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one() -> int:
            async with s.get(env.url("/echo")) as r:
                await r.read()
                return r.status
        assert await asyncio.gather(*(one() for _ in range(20))) == [200] * 20
    await eventually(lambda: env.hooks.mirrors.count("sent") == 32, within=3)
    assert env.hooks.mirrors == ["sent"] * 32  # none failed past the limit
    assert shadow.conns_total - before <= 3  # pipelined: 10 copies a line, not one each
    assert env.proxy is not None and env.proxy.mirror.in_flight == 0
    shadow.max_requests = 0  # (reconfigured: it keeps connections open now)
    for i in range(50):  # retired lines close themselves once answered, never piling up
        assert (await fetch(env))[0] == 200
        await eventually(lambda n=33 + i: len(env.hooks.mirrors) == n)
    assert env.hooks.mirrors == ["sent"] * 82
    assert len(env.proxy.mirror.lines[("127.0.0.1", shadow.port)]) == 1


class ChunkShadow(asyncio.Protocol):
    """A shadow that records what each read brought (when, how many request heads) and
    answers every head with an empty 200."""

    def __init__(self, reads: list[tuple[float, int]]) -> None:
        self.reads = reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        heads = data.count(b"\r\n\r\n")
        self.reads.append((time.monotonic(), heads))
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * heads)


async def test_a_busy_line_sends_one_batch_per_hold_and_a_quiet_one_at_once(env: Env) -> None:
    """Mirror lines batch copies close together (each batch wakes the shadow): after a batch,
    copies wait out `mirror_hold` and leave together. A line that was quiet longer than that
    sends its copy at the end of the turn, not after a hold."""
    reads: list[tuple[float, int]] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ChunkShadow(reads), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    await env.upstream("primary")
    env.backends[SHADOW] = [Endpoint(cluster="c2", ip="127.0.0.1", port=port)]
    hold = 0.3
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),))),
                    limits=Limits(mirror_hold=hold))
    try:
        async with aiohttp.ClientSession() as s:
            async def get() -> float:
                async with s.get(env.url("/echo")) as r:
                    assert r.status == 200
                    await r.read()
                return time.monotonic()

            answered = await get()  # the line's first copy: sent at once
            await eventually(lambda: len(reads) == 1)
            assert reads[0][0] - answered < hold / 2
            for _ in range(12):  # one at a time, well within one hold period
                await get()
            await eventually(lambda: sum(n for _, n in reads) == 13, within=3)
            assert len(reads) <= 3, reads  # held, not one write per copy
            await eventually(lambda: env.hooks.mirrors.count("sent") == 13, within=3)
            await asyncio.sleep(hold * 1.5)  # quiet: the next copy goes at once again
            answered = await get()
            await eventually(lambda: sum(n for _, n in reads) == 14)
            assert reads[-1][0] - answered < hold / 2
    finally:
        server.close()


ODD_ANSWERS = [  # what a shadow may answer; each written in pieces, 1 ms apart
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",  # (after chunked: llhttp counts)
]


async def test_pipelined_copies_counted_whatever_the_shadow_answers(env: Env) -> None:
    """Interim responses, no-body statuses, chunked bodies, answers cut into small reads:
    every copy is counted sent once its answer ended, none before."""
    received: list[bytes] = []
    release = asyncio.Event()

    async def shadow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        for i in range(len(ODD_ANSWERS)):
            while b"\r\n\r\n" not in buf:
                buf += await reader.read(65536)
            head, _, buf = buf.partition(b"\r\n\r\n")
            received.append(head)
            if i == 1:
                await release.wait()  # two copies sent, answers held back
            answer = ODD_ANSWERS[i]
            for k in range(0, len(answer), 7):
                writer.write(answer[k:k + 7])
                await writer.drain()
                await asyncio.sleep(0.001)
        await reader.read()  # (EOF)
        writer.close()

    server = await asyncio.start_server(shadow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    await env.upstream("primary")
    env.backends[SHADOW] = [Endpoint(cluster="c2", ip="127.0.0.1", port=port)]
    await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),))))
    try:
        for i in range(len(ODD_ANSWERS)):
            assert (await fetch(env, f"/n{i}"))[0] == 200
            if i == 1:
                await eventually(lambda: len(received) == 2)
                await asyncio.sleep(0.05)
                assert env.hooks.mirrors == ["sent"]  # the second copy's answer is held back
                release.set()
        await eventually(lambda: env.hooks.mirrors == ["sent"] * len(ODD_ANSWERS), within=3)
        assert [h.split(b" ")[1] for h in received] == [f"/n{i}".encode() for i in range(5)]
        assert env.proxy is not None and env.proxy.mirror.in_flight == 0
        assert len(env.proxy.mirror.lines[("127.0.0.1", port)]) == 1  # all on one line
    finally:
        server.close()


def test_target_and_shadow_host_parsing() -> None:
    assert parse_target("http://10.0.0.1:9000$request_uri") == (("10.0.0.1", 9000), "$request_uri")
    assert parse_target("http://mirror.example/x?y=1") == (("mirror.example", 80), "/x?y=1")
    assert parse_target("http://[::1]:81") == (("::1", 81), "")
    assert parse_target("https://secure.example$request_uri") == (("secure.example", 443, "tls"), "$request_uri")
    assert parse_target("HTTPS://s.example:8443/m") == (("s.example", 8443, "tls"), "/m")
    assert parse_target("ftp://x/") is None
    assert shadow_host(b"cluster1") == b"cluster1-shadow"
    assert shadow_host(b"a.example:8080") == b"a.example-shadow:8080"
