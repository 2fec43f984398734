"""Gateway data path: upstream errors (502/504 with a cause), in-request fallback and retries,
the zero-non-2xx cluster kill, and no leaked sockets."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

import aiohttp
import pytest
from gwkit import (
    REF,
    Env,
    dead_endpoint,
    decision,
    eventually,
    open_fds,
    raw,
    read_response,
)
from netkit import silent_listener

from gateway.proxy import Limits
from gateway.types import BackendRef, Endpoint, RetryPolicy, Timeouts


@pytest.fixture
async def env():
    e = Env()
    yield e
    await e.close()


def no_retry(**kw: object) -> RetryPolicy:
    return RetryPolicy(attempts=1, **kw)  # type: ignore[arg-type]


async def get(env: Env, path: str, method: str = "GET", **kw: object) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.request(method, env.url(path), **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.text()


# -- errors -----------------------------------------------------------------------------------


async def test_connect_refused_is_502_naming_the_cause(env: Env) -> None:
    env.backends[REF] = [dead_endpoint()]
    await env.start(("*", "/", decision(retry=no_retry())))
    status, text = await get(env, "/")
    assert status == 502 and "upstream connect error" in text and "refused" in text.lower()
    assert env.clusters.outcomes() == ["connect_failure"]


async def test_reset_before_response_is_502(env: Env) -> None:
    await env.upstream("u1")
    await env.start(("*", "/", decision(retry=no_retry())))
    status, text = await get(env, "/reset")
    assert status == 502 and "reset" in text
    assert env.clusters.outcomes() == ["reset"]


async def test_invalid_response_is_502(env: Env) -> None:
    await env.upstream("u1")
    await env.start(("*", "/", decision(retry=no_retry())))
    status, text = await get(env, "/garbage")
    assert status == 502 and "invalid response" in text


async def test_upstream_timeout_is_504(env: Env) -> None:
    await env.upstream("u1")
    await env.start(("*", "/", decision(retry=no_retry(), timeouts=Timeouts(read=0.2))))
    t0 = time.monotonic()
    status, text = await get(env, "/sleep/2")
    assert status == 504 and "timeout" in text and time.monotonic() - t0 < 1.0
    assert env.clusters.outcomes() == ["timeout"]


async def test_total_timeout_bounds_retries(env: Env) -> None:
    await env.upstream("a", "c1")
    await env.upstream("b", "c2")
    await env.start(("*", "/", decision(retry=RetryPolicy(per_try_timeout=0.3),
                                        timeouts=Timeouts(total=0.45))))
    t0 = time.monotonic()
    status, text = await get(env, "/sleep/2")
    assert status == 504 and "request timeout" in text
    assert time.monotonic() - t0 < 1.0


async def test_connect_timeout_is_504(env: Env) -> None:
    with silent_listener() as port:
        env.backends[REF] = [Endpoint("c1", "127.0.0.1", port)]
        await env.start(("*", "/", decision(retry=no_retry(), timeouts=Timeouts(connect=0.2))))
        status, text = await get(env, "/")
        assert status == 504 and "connect timeout" in text


# -- retries ----------------------------------------------------------------------------------


async def test_connect_failure_retries_on_another_cluster(env: Env) -> None:
    env.backends[REF] = [dead_endpoint("c1")]
    await env.upstream("c1-live", "c1")
    await env.upstream("c2-live", "c2")
    await env.start()
    status, text = await get(env, "/", method="POST", data=b"payload")
    assert status == 200 and '"server": "c2-live"' in text  # POST never left: retried
    assert env.clusters.outcomes() == ["connect_failure", "success"]
    assert env.hooks.retries == 1


BASE = 0.0123  # a backoff base no other caller of random.uniform uses


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each backoff drawn, as its ceiling in units of BASE (a retry that waits draws
    U[0, ceiling]); none is waited."""
    drawn: list[int] = []
    real = random.uniform

    def uniform(a: float, b: float) -> float:
        if a == 0 and b in (BASE, 3 * BASE, 7 * BASE):
            drawn.append(round(b / BASE))
            return 0.0
        return real(a, b)

    monkeypatch.setattr(random, "uniform", uniform)
    return drawn


async def test_the_first_retry_after_a_refused_connect_goes_at_once(env: Env, backoffs: list[int]) -> None:
    """The request never reached the pod: the first retry, on another endpoint, does not wait
    (nginx); a second retry waits the jittered backoff (Envoy's retry 2: U[0, 3 * base])."""
    env.backends[REF] = [dead_endpoint("c1")]
    await env.upstream("c2-live", "c2")
    await env.start(("*", "/one", decision(retry=RetryPolicy(backoff_base=BASE))),
                    ("*", "/all", decision(retry=RetryPolicy(backoff_base=BASE))))
    status, text = await get(env, "/one")
    assert status == 200 and '"server": "c2-live"' in text
    assert env.clusters.outcomes() == ["connect_failure", "success"] and env.hooks.retries == 1
    assert backoffs == []  # retried at once
    env.backends[REF] = [dead_endpoint(f"c{i}") for i in range(3)]
    env.clusters.reports.clear()
    status, text = await get(env, "/all")
    assert status == 502 and env.clusters.outcomes() == ["connect_failure"] * 3
    assert env.hooks.retries == 3 and backoffs == [3]  # the second retry waited


async def test_a_retry_after_an_answer_waits_the_backoff(env: Env, backoffs: list[int]) -> None:
    """A retriable status (the request reached the pod) is retried after the backoff, as before."""
    broken = await env.upstream("broken", "c1")
    broken.default_status = 503
    await env.upstream("fine", "c2")
    await env.start(("*", "/", decision(retry=RetryPolicy(on_statuses=(503,), backoff_base=BASE))))
    for _ in range(4):
        assert (await get(env, "/"))[0] == 200
    assert env.hooks.retries >= 1 and backoffs == [1] * env.hooks.retries


async def test_reset_retried_for_get_not_for_post(env: Env) -> None:
    bad = await env.upstream("bad", "c1")
    await env.upstream("good", "c2")
    bad.hook = lambda req: setattr(req, "path", "/reset")
    good = env.upstreams[1]
    good_calls = len(good.requests)
    await env.start()
    status, text = await get(env, "/echo")
    assert status == 200 and '"server": "good"' in text
    status, text = await get(env, "/echo", method="POST", data=b"x")
    assert status == 502 and "reset" in text  # the POST left: not retried
    assert len(good.requests) == good_calls + 1


async def test_non_idempotent_retried_when_allowed_with_replayed_body(env: Env) -> None:
    bad = await env.upstream("bad", "c1")
    await env.upstream("good", "c2")
    bad.hook = lambda req: setattr(req, "path", "/reset")
    await env.start(("*", "/", decision(retry=RetryPolicy(non_idempotent=True))))
    body = bytes(range(256)) * 40  # 10 KiB < retry buffer
    status, text = await get(env, "/echo", method="POST", data=body)
    assert status == 200 and hashlib.sha256(body).hexdigest() in text


async def test_body_beyond_retry_buffer_is_not_replayed(env: Env) -> None:
    bad = await env.upstream("bad", "c1")
    await env.upstream("good", "c2")
    bad.hook = lambda req: setattr(req, "path", "/reset")
    await env.start(("*", "/", decision(retry=RetryPolicy(non_idempotent=True))),
                    limits=Limits(retry_buffer=1024))
    status, text = await get(env, "/echo", method="PUT", data=b"z" * 4096)
    assert status == 502 and "reset" in text


async def test_retriable_status_discarded_and_retried_only_when_configured(env: Env) -> None:
    broken = await env.upstream("broken", "c1")
    broken.default_status = 503
    await env.upstream("fine", "c2")
    await env.start(("*", "/plain", decision()),
                    ("*", "/retry", decision(retry=RetryPolicy(on_statuses=(503,)))))
    plain = [await get(env, "/plain") for _ in range(4)]
    assert sorted(c for c, _ in plain) == [200, 200, 503, 503]  # default: relayed as is
    for _ in range(4):
        status, text = await get(env, "/retry")
        assert status == 200 and "fine" in text
    assert "status_503" in env.hooks.errors


async def test_per_try_timeout_moves_to_the_next_endpoint(env: Env) -> None:
    slow = await env.upstream("slow", "c1")
    slow.delay = 2.0
    await env.upstream("quick", "c2")
    await env.start(("*", "/", decision(retry=RetryPolicy(per_try_timeout=0.2))))
    t0 = time.monotonic()
    status, text = await get(env, "/echo")
    assert status == 200 and "quick" in text and time.monotonic() - t0 < 1.0
    assert env.clusters.outcomes() == ["timeout", "success"]


async def test_retry_avoids_the_tried_cluster(env: Env) -> None:
    for name in ("a1", "a2", "a3"):
        (await env.upstream(name, "c1")).default_status = 503
    await env.upstream("b1", "c2")
    await env.start(("*", "/", decision(retry=RetryPolicy(attempts=2, on_statuses=(503,)))))
    for _ in range(3):
        status, text = await get(env, "/")
        assert status == 200 and "b1" in text
    clusters = [e.cluster for e, _, _ in env.clusters.reports]
    assert clusters == ["c1", "c2"] * 3


async def test_nothing_retried_once_response_bytes_left(env: Env) -> None:
    part = await env.upstream("partial", "c1")
    other = await env.upstream("other", "c2")
    part.hook = lambda req: setattr(req, "path", "/partial")
    await env.start()
    async with raw(env.port) as (r, w):
        w.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        with pytest.raises(asyncio.IncompleteReadError):
            await read_response(r)
    assert other.requests == [] and len(part.requests) == 1


async def test_killing_one_cluster_while_gets_flow_yields_only_2xx(env: Env) -> None:
    c1 = [await env.upstream(f"c1-{i}", "cluster1", host=f"127.0.0.{2 + i}") for i in range(3)]
    for i in range(3):
        await env.upstream(f"c2-{i}", "cluster2", host=f"127.0.0.{5 + i}")
    await env.start()
    statuses: dict[int, int] = {}
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def client(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with s.get(env.url("/echo")) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
            except aiohttp.ClientError as exc:
                errors.append(exc)

    async with aiohttp.ClientSession() as s:
        tasks = [asyncio.create_task(client(s)) for _ in range(16)]
        await asyncio.sleep(0.4)
        served_before = sum(len(u.requests) for u in c1)
        for u in c1:
            await u.kill()
        await asyncio.sleep(0.8)
        stop.set()
        await asyncio.gather(*tasks)
    assert served_before > 0 and errors == []
    assert set(statuses) == {200} and statuses[200] > 100
    assert env.hooks.retries > 0


# -- no leaks ---------------------------------------------------------------------------------


async def test_no_leaked_sockets_after_a_burst_with_failures(env: Env) -> None:
    await env.upstream("u1", "c1")
    dead = BackendRef("default", "dead", 80)
    env.backends[dead] = [dead_endpoint("c2")]
    policy = {"retry": no_retry(), "timeouts": Timeouts(read=0.2)}
    await env.start(("*", "/", decision(**policy)), ("*", "/dead", decision(dead, **policy)))
    assert env.proxy is not None
    paths = ["/echo", "/reset", "/garbage", "/sleep/0.4", "/partial", "/status/503", "/eof", "/close",
             "/dead"]
    before = open_fds()
    seen: set[int] = set()
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> None:
            try:
                async with s.get(env.url(paths[i % len(paths)])) as r:
                    await r.read()
                    seen.add(r.status)
            except aiohttp.ClientError:
                seen.add(0)
        await asyncio.gather(*(one(i) for i in range(160)))
    assert {200, 502, 503, 504} <= seen
    env.proxy.pool.close_idle()
    await eventually(lambda: open_fds() <= before and env.proxy is not None
                     and env.proxy.pool.open_connections == 0, within=3.0)


async def test_attempts_budget_and_backoff_bound_the_retries(env: Env) -> None:
    env.backends[REF] = [dead_endpoint(f"c{i}") for i in range(5)]
    await env.start()  # default policy: 3 attempts, backoff 25 ms base, 250 ms cap
    t0 = time.monotonic()
    status, text = await get(env, "/")
    assert status == 502 and "connect error" in text
    assert env.clusters.outcomes() == ["connect_failure"] * 3
    assert env.hooks.retries == 2 and time.monotonic() - t0 < 0.5
    assert len({e.cluster for e, _, _ in env.clusters.reports}) == 3  # each retry another cluster


async def test_a_closed_pooled_connection_gets_one_free_retry(env: Env) -> None:
    """The upstream drops a kept-alive connection when the next request arrives (the idle-close
    race): the proxy retries once on a fresh connection, without blaming the endpoint."""
    conns = 0

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the second request on this connection...
        writer.transport.abort()  # ...finds it closed

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    env.backends[REF] = [Endpoint("c1", "127.0.0.1", server.sockets[0].getsockname()[1])]
    await env.start()
    try:
        for _ in range(3):
            assert await get(env, "/") == (200, "ok")
    finally:
        server.close()
    assert conns == 3 and env.clusters.outcomes() == ["success"] * 3
    assert env.hooks.retries == 0
