"""backend-protocol (HTTPS to the pods): parsing (table-driven), and real requests through
the gateway to an aiohttp server that only speaks TLS, with pooled TLS connections."""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp
import pytest
from aiohttp import web
from fleetkit import endpoint, source_slice
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import MAIN, MSE, NGX, OURS, decide, one
from test_gw_tls import CA

from gateway.upstream.health import http_probe
from mcs_controller.access.resources import ENDPOINT_SLICES, SERVICES

HOST = "secure.example.com"
POD_IP = "127.0.82.1"


@pytest.mark.parametrize("value, tls, problem", [
    ("HTTPS", True, None),
    ("https", True, None),
    ("HTTP", False, None),
    ("AUTO_HTTP", False, None),
    ("GRPC", False, "GRPC backends are not supported (HTTP/1.1 and HTTPS only); proxied as HTTP"),
    ("SPDY", False, "'SPDY' is not a backend protocol (HTTP, HTTPS); ignored"),
])
def test_backend_protocol(value, tls, problem):
    table, _, msgs = one({NGX + "backend-protocol": value})
    assert decide(table).upstream_tls is tls
    assert msgs == ([problem] if problem else [])
    assert table.describe()[0]["backendProtocol"] == ("HTTPS" if tls else "HTTP")


def test_mse_prefix():
    table, problems, _ = one({MSE + "backend-protocol": "HTTPS"})
    assert decide(table).upstream_tls and problems == []


async def tls_pod(ca: CA) -> tuple[web.AppRunner, int, list[tuple[bool, tuple]]]:
    """An aiohttp pod serving only TLS; it records (secure, client address) per request
    (health probes apart)."""
    seen: list[tuple[bool, tuple]] = []

    async def handle(request: web.Request) -> web.Response:
        if request.path != "/healthz" or request.headers.get("User-Agent") != "amcs-gateway-health-check":
            seen.append((request.secure, request.transport.get_extra_info("peername")))
        return web.Response(text=f"tls pod {request.path_qs}")

    runner, port = await serve_tls(handle, POD_IP, ca.server_context("pod.local"))
    return runner, port, seen


async def tls_service(app, port: int, *ips: str) -> None:
    """The `tlsweb` Service in the member `east`, its pods at `ips` on `port` (HTTPS)."""
    east = app.upstream.catalog.members["east"].services.client
    await east.create(SERVICES, {"metadata": {"name": "tlsweb", "namespace": "demo"},
                                 "spec": {"ports": [{"name": "https", "port": 80, "targetPort": port}]}})
    await east.create(ENDPOINT_SLICES, source_slice("tlsweb", "demo", [endpoint(ip) for ip in ips],
                                                    ports=[{"name": "https", "port": port}]))


async def serve_tls(handle, ip: str, ctx: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    """An aiohttp app answering every path with `handle`, over TLS only; its runner and port."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ip, 0, ssl_context=ctx)
    await site.start()
    return runner, runner.addresses[0][1]


async def test_health_probes_speak_tls_when_the_ingress_says_https():
    runner, port, seen = await tls_pod(CA())
    try:
        assert await http_probe(POD_IP, port, "/healthz", "svc", 2.0, tls=True) == 200
        assert await http_probe(POD_IP, port, "/healthz", "svc", 2.0) is None  # plain: no answer
    finally:
        await runner.cleanup()
    hc = {NGX + "backend-protocol": "HTTPS", OURS + "health-check-path": "/healthz"}
    table, _, msgs = one(hc)
    assert msgs == [] and table.backends()[MAIN].health_check.tls is True
    table, _, _ = one({OURS + "health-check-path": "/healthz"})
    assert table.backends()[MAIN].health_check.tls is False
    table, _, _ = one({NGX + "backend-protocol": "HTTPS"})
    assert table.backends()[MAIN].health_check is None  # no probe unless asked for


def test_a_same_service_mirror_follows_the_routes_protocol():
    table, _, msgs = one({NGX + "backend-protocol": "HTTPS", OURS + "mirror-cluster": "cluster2-beijing"})
    assert msgs == [] and [m.tls for m in decide(table).mirrors] == [True]
    table, _, _ = one({OURS + "mirror-cluster": "cluster2-beijing"})
    assert [m.tls for m in decide(table).mirrors] == [False]


async def test_an_https_mirror_target_gets_its_copies_over_tls():
    runner, port, seen = await tls_pod(CA())
    ing = app_ingress("m", HOST, "web", {NGX + "mirror-target": f"https://{POD_IP}:{port}/copy$request_uri"})
    try:
        async with gateway_over([ing], "127.0.82.10") as (app, up), aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{app.proxy.port}/orig?q=1", headers={"Host": HOST}) as r:
                assert r.status == 200  # the primary, plain HTTP
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.05)
            assert seen and seen[0][0] is True  # the copy arrived over TLS
            assert up.requests[-1].path == "/orig?q=1"
    finally:
        await runner.cleanup()


async def routes(app) -> list[dict]:
    """The /routes page's backends, as the admin listener serves them."""
    return json.loads((await app._routes(None)).text)["backends"]


async def test_https_backends_are_reached_over_pooled_tls():
    runner, port, seen = await tls_pod(CA())
    ings = [app_ingress("secure", HOST, "tlsweb", {NGX + "backend-protocol": "HTTPS",
                                                   OURS + "health-check-path": "/healthz",
                                                   OURS + "health-check-interval": "0.2"}),
            app_ingress("plain", "plain.example.com", "tlsweb")]
    try:
        async with gateway_over(ings, "127.0.82.9") as (app, _), aiohttp.ClientSession() as s:
            await tls_service(app, port, POD_IP)
            url = f"http://127.0.0.1:{app.proxy.port}"
            for _ in range(100):
                async with s.get(f"{url}/a?x=1", headers={"Host": HOST}) as r:
                    if r.status == 200:
                        assert await r.text() == "tls pod /a?x=1"
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the TLS pod was never reached")
            for i in range(3):
                async with s.get(f"{url}/b{i}", headers={"Host": HOST}) as r:
                    assert r.status == 200
            assert all(secure for secure, _ in seen)
            for _ in range(100):  # the first probe runs within a tenth of the 0.2 s interval
                backend = next(b for b in (await routes(app)) if b["backend"].startswith("demo/tlsweb"))
                if backend["endpoints"][0]["healthy"] is not None:
                    break
                await asyncio.sleep(0.05)
            assert backend["endpoints"][0]["healthy"] is True  # probed over TLS
            assert len({peer for _, peer in seen[-4:]}) == 1  # one pooled TLS connection
            async with s.get(f"{url}/c", headers={"Host": "plain.example.com"}) as r:
                assert r.status == 502  # plain HTTP to a TLS port: the pod hangs up
    finally:
        await runner.cleanup()
