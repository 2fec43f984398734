"""ingress-nginx `limit-rate` / `limit-rate-after` (nginx limit_rate, limit_rate_after): the
annotations, and responses through the gateway over real sockets. Times are only bounded from
below where the allowance makes a response wait (it cannot be faster), generously above."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import MSE, NGX, build, main_and_canary, problems_for, simple

from gateway.types import RequestView

RATE, AFTER = NGX + "limit-rate", NGX + "limit-rate-after"
KIB = 1024


def route(ann: dict) -> tuple:
    table, problems = build(simple("site", ann=ann))
    d = table.route(RequestView("GET", "/", "a.example.com", {}, "10.0.0.1"))
    return (d.send_rate, d.send_rate_after), problems


@pytest.mark.parametrize("ann, expected", [
    ({RATE: "100"}, (100 * KIB, 0)),  # kilobytes a second, as ingress-nginx writes `100k`
    ({RATE: "100", AFTER: "10"}, (100 * KIB, 10 * KIB)),
    ({MSE + "limit-rate": "8"}, (8 * KIB, 0)),  # MSE's prefix too
    ({AFTER: "10"}, (0, 0)),  # limit_rate_after alone limits nothing
    ({RATE: "0", AFTER: "10"}, (0, 0)),  # 0: no limit
    ({}, (0, 0)),
])
def test_parsing(ann, expected):
    got, problems = route(ann)
    assert got == expected and problems == []


@pytest.mark.parametrize("ann, annotation, fragment, expected", [
    ({RATE: "100k"}, "limit-rate", "not an integer", (0, 0)),  # whole kilobytes only
    ({RATE: "-5"}, "limit-rate", "out of range", (0, 0)),
    ({RATE: "4", AFTER: "lots"}, "limit-rate-after", "not an integer", (4 * KIB, 0)),
])
def test_bad_values_are_reported_and_ignored(ann, annotation, fragment, expected):
    got, problems = route(ann)
    assert got == expected
    assert any(fragment in m for m in problems_for(problems, "default/site", annotation))


def test_a_canary_cannot_set_it_and_routes_show_it():
    table, problems = main_and_canary({RATE: "4", AFTER: "1"}, {RATE: "1000"})
    assert problems_for(problems, "default/can", "limit-rate")
    d = table.route(RequestView("GET", "/", "a.example.com", {}, "10.0.0.1"))
    assert d.backend.service == "canary" and d.send_rate == 4 * KIB  # the main's limit
    [described] = table.describe()
    assert described["sendRate"] == {"bytesPerSecond": 4 * KIB, "after": KIB}


async def fetch(s: aiohttp.ClientSession, url: str, host: str) -> tuple[int, bytes, float]:
    start = time.monotonic()
    async with s.get(url, headers={"Host": host}) as r:
        body = await r.read()
        return r.status, body, time.monotonic() - start


async def test_responses_leave_at_the_rate_after_the_first_allowance():
    ings = [app_ingress("slow", "slow.example.com", "web", {RATE: "64"}),
            app_ingress("after", "after.example.com", "web", {RATE: "64", AFTER: "192"}),
            # the read timeout counts from the last bytes that left, not from the last read
            app_ingress("timed", "timed.example.com", "web",
                        {RATE: "64", NGX + "proxy-read-timeout": "1"}),
            app_ingress("free", "free.example.com", "web")]
    async with gateway_over(ings, "127.0.76.1") as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}/bytes/{192 * KIB}"
        async with aiohttp.ClientSession() as s:
            status, body, took = await fetch(s, url, "slow.example.com")
            # 64 KiB (with the head) in the first second, then 64 KiB a second: >= 2 s
            assert status == 200 and body == b"x" * (192 * KIB)
            assert 1.9 <= took < 8.0, took
            status, body, took = await fetch(s, url, "timed.example.com")
            assert status == 200 and len(body) == 192 * KIB and took >= 1.9, took
            status, body, took = await fetch(s, url, "after.example.com")  # 192 KiB free, then 64/s
            assert status == 200 and len(body) == 192 * KIB and took < 1.5, took
            status, body, took = await fetch(s, url, "free.example.com")
            assert status == 200 and len(body) == 192 * KIB and took < 1.5, took
            # chunked: the framing counts too; the last chunk waits for the held bytes
            chunked = f"http://127.0.0.1:{app.proxy.port}/chunked/300"
            status, body, took = await fetch(s, chunked, "slow.example.com")
            assert status == 200 and body == b"".join(f"chunk{i};".encode() for i in range(300))


async def test_a_pipelined_request_waits_for_the_throttled_response_and_the_connection_lives():
    async with gateway_over([app_ingress("slow", "slow.example.com", "web", {RATE: "16"})],
                            "127.0.76.2") as (app, up):
        reader, writer = await asyncio.open_connection("127.0.0.1", app.proxy.port)
        size = 40 * KIB  # 16 KiB at once, then 16 KiB a second: about 1.5 s
        req = f"GET /bytes/{size} HTTP/1.1\r\nHost: slow.example.com\r\n\r\n".encode()
        start = time.monotonic()
        writer.write(req + b"GET /second HTTP/1.1\r\nHost: slow.example.com\r\n\r\n")
        for expected in (size, None):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            body = await asyncio.wait_for(reader.readexactly(length), 10)
            if expected is not None:
                assert body == b"x" * size and time.monotonic() - start >= 1.4
            else:
                assert b'"path": "/second"' in body  # after the whole first body, in order
        writer.write(req)  # the connection is still good for another throttled response
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        await asyncio.wait_for(reader.readexactly(size), 10)
        writer.close()


async def test_a_client_that_leaves_mid_response_leaves_nothing_behind():
    async with gateway_over([app_ingress("slow", "slow.example.com", "web", {RATE: "4"})],
                            "127.0.76.3") as (app, up):
        reader, writer = await asyncio.open_connection("127.0.0.1", app.proxy.port)
        writer.write(f"GET /bytes/{64 * KIB} HTTP/1.1\r\nHost: slow.example.com\r\n\r\n".encode())
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await reader.readexactly(2 * KIB)  # some came at once, the rest is held
        writer.transport.abort()
        await asyncio.sleep(0.3)
        assert not app.proxy.conns
        loop = asyncio.get_running_loop()  # the throttle's timer went with the exchange
        armed = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()
                 and getattr(h._callback, "__name__", "") == "_release"]
        assert armed == []
        async with aiohttp.ClientSession() as s:  # and the gateway serves on
            status, _, _ = await fetch(s, f"http://127.0.0.1:{app.proxy.port}/x", "slow.example.com")
            assert status == 200


async def test_a_body_that_ends_with_the_upstream_connection_arrives_whole_at_the_rate():
    """An upstream body delimited by its connection's close: chunked to an HTTP/1.1 client,
    close-delimited to an HTTP/1.0 one; either way all of it arrives, at the rate (the close
    is read only once the held bytes have left, since reading pauses while they wait)."""
    async with gateway_over([app_ingress("slow", "slow.example.com", "web", {RATE: "16"})],
                            "127.0.76.4") as (app, up):
        size = 40 * KIB  # 16 KiB at once, then 16 KiB a second
        url = f"http://127.0.0.1:{app.proxy.port}/eof/{size}"
        async with aiohttp.ClientSession() as s:
            status, body, took = await fetch(s, url, "slow.example.com")
        assert status == 200 and body == b"y" * size and took >= 1.4, took
        reader, writer = await asyncio.open_connection("127.0.0.1", app.proxy.port)
        start = time.monotonic()
        writer.write(f"GET /eof/{size} HTTP/1.0\r\nHost: slow.example.com\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 10)  # until the gateway closes
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"y" * size
        assert time.monotonic() - start >= 1.4
        writer.close()
