"""load-balance ewma through the real gateway (the balancer itself is table-tested in
tests/test_gw_upstream_lb.py): real pods over HTTP, one of them slow."""

from __future__ import annotations

import asyncio

import aiohttp
from fleetkit import eventually
from gwkit import Upstream
from test_gw_app import gateway_over, ingress, world

from gateway.app import GatewayApp
from mcs_controller.access.resources import INGRESSES


async def test_ewma_through_the_gateway_keeps_requests_off_a_slow_pod():
    """load-balance ewma with one fast and one slow pod (100 ms per answer), two clusters:
    round robin would give the slow pod half; ewma learns it from the first answers."""
    fast = await Upstream("east", host="127.0.78.1").start()
    slow = await Upstream("west", host="127.0.78.2", delay=0.1).start()
    hub, members = await world({"east": fast, "west": slow})
    await hub.create(INGRESSES, ingress("web", "web.example.com", "web",
                                        {"nginx.ingress.kubernetes.io/load-balance": "ewma"}))
    app = GatewayApp(hub, members, listen=("127.0.0.1", 0), admin=None)
    await app.start()
    try:
        await app.wait_ready(10)
        url = f"http://127.0.0.1:{app.proxy.port}/"
        async with aiohttp.ClientSession() as s:
            for _ in range(40):
                async with s.get(url, headers={"Host": "web.example.com"}) as r:
                    assert r.status == 200
        assert len(fast.requests) + len(slow.requests) == 40
        assert len(slow.requests) <= 3, len(slow.requests)  # learnt from its first answers
        ref = next(iter(app.table.backends()))
        state = {d["cluster"]: d for d in app.upstream.describe(ref)}
        assert state["west"]["ewma_ms"] > 50 > state["east"]["ewma_ms"]
    finally:
        await app.stop(0.5)
        await fast.stop()
        await slow.stop()


async def test_a_request_under_way_when_ewma_is_turned_on_is_not_timed():
    """An attempt that started before its pod's backend switched to ewma was not timed: its
    answer must not count as a sample (from time 0 it would look hours slow)."""
    async with gateway_over([ingress("web", "web.example.com", "web")], "127.0.78.3") as (app, _):
        url = f"http://127.0.0.1:{app.proxy.port}/sleep/0.6"
        async with aiohttp.ClientSession() as s:
            async def get() -> int:
                async with s.get(url, headers={"Host": "web.example.com"}) as r:
                    await r.read()
                    return r.status

            slow = asyncio.ensure_future(get())
            await asyncio.sleep(0.1)  # under way, not timed
            turned = ingress("web", "web.example.com", "web",
                             {"nginx.ingress.kubernetes.io/load-balance": "ewma"})
            turned["metadata"]["resourceVersion"] = (
                await app.hub.get(INGRESSES, "demo", "web"))["metadata"]["resourceVersion"]
            await app.hub.replace(INGRESSES, turned)
            await eventually(lambda: app.upstream.summary(
                next(iter(app.table.backends())))["algorithm"] == "ewma", within=3.0)
            assert await slow == 200
        (state,) = app.upstream.describe(next(iter(app.table.backends())))
        assert state["ewma_ms"] == 0.0
