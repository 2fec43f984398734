"""MISSION scenarios end to end on the all-in-one fleet: real HTTP through the gateway."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import aiohttp
import pytest

from mcs_controller.access.loader import load_fleet
from mcs_controller.access.resources import PODS
from mcs_fleet.allinone import AllInOne, Ports

ROOT = Path(__file__).resolve().parent.parent
HOST = {"Host": "web-demo.example.com"}


@pytest.fixture
async def two_regions():
    fleet, errors = await load_fleet(ROOT / "manifests" / "examples" / "two-regions")
    assert errors == []
    app = AllInOne(fleet, Ports(controller_admin=0, dns=0, dns_admin=0, gateway=0, gateway_admin=0))
    await app.start()
    try:
        await app.settled(quiet=0.3)
        yield app
    finally:
        await app.stop()


async def served_by(session: aiohttp.ClientSession, url: str, n: int) -> collections.Counter:
    seen: collections.Counter = collections.Counter()
    for _ in range(n):
        async with session.get(url, headers=HOST) as resp:
            body = (await resp.text()).strip()
            seen[body if resp.status == 200 else resp.status] += 1
    return seen


async def pods(app: AllInOne, cluster: str) -> list[str]:
    listed = await app.fleet.clusters[cluster].list(PODS, "web-demo")
    return [p["metadata"]["name"] for p in listed.items]


def env(cluster: str) -> str:
    return f"This is env {cluster} !"


async def test_two_regions_split_then_fail_over_to_the_other_beijing_then_hangzhou(two_regions):
    app = two_regions
    url = f"http://127.0.0.1:{app.gateway.address[1]}/"
    async with aiohttp.ClientSession() as session:
        seen = await served_by(session, url, 40)
        assert seen == {env("cluster1-beijing"): 20, env("cluster2-beijing"): 20}
        for pod in await pods(app, "cluster1-beijing"):
            await app.sim.stop_pod("cluster1-beijing", "web-demo", pod)
        seen = await served_by(session, url, 20)
        assert seen == {env("cluster2-beijing"): 20}, seen
        for pod in await pods(app, "cluster2-beijing"):
            await app.sim.stop_pod("cluster2-beijing", "web-demo", pod)
        seen = await served_by(session, url, 20)
        assert seen == {env("cluster1-hangzhou"): 20}, seen
        for pod in await pods(app, "cluster1-beijing"):
            await app.sim.start_pod("cluster1-beijing", "web-demo", pod)

        for _ in range(100):  # health checks every second bring the pool back
            if await served_by(session, url, 4) == {env("cluster1-beijing"): 4}:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("cluster1-beijing never came back")


async def test_killing_a_whole_cluster_while_gets_flow_gives_no_errors(two_regions):
    app = two_regions
    url = f"http://127.0.0.1:{app.gateway.address[1]}/"
    statuses: collections.Counter = collections.Counter()
    stop = asyncio.Event()

    async def client():
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.get(url, headers=HOST) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(0.3)
    await app.sim.stop_cluster("cluster1-beijing")  # every pod's server gone at once, no readiness change
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*clients)
    assert sum(statuses.values()) > 50
    assert statuses == {200: sum(statuses.values())}, statuses
