"""Active health checks against real HTTP servers on 127.91.x.y (this file's loopback range)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from fleetkit import endpoint, eventually, namespace, service, source_slice

from gateway.types import (
    BackendPolicy,
    BackendRef,
    Endpoint,
    HealthCheckPolicy,
    OutlierPolicy,
    RequestView,
)
from gateway.upstream.health import HealthChecker, http_probe
from gateway.upstream.manager import UpstreamManager
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import ENDPOINT_SLICES, NAMESPACES, SERVICES

PORT = 18091
REQ = RequestView("GET", "/", "example.com", {}, "192.0.2.1")
FAST = HealthCheckPolicy(path="/healthz", interval=0.03, timeout=0.5, healthy_threshold=2,
                         unhealthy_threshold=3)


class Pod:
    """A tiny HTTP server whose status we flip."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.status = 200
        self.delay = 0.0
        self.hits: list[tuple[str, str | None]] = []
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append((request.path, request.headers.get("Host")))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text="ok")

    async def start(self) -> Pod:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.ip, PORT).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@contextlib.asynccontextmanager
async def pods(*ips: str) -> AsyncIterator[list[Pod]]:
    started = [await Pod(ip).start() for ip in ips]
    try:
        yield started
    finally:
        for p in started:
            await p.stop()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[bool, bool, bool | None]] = []

    def __call__(self, ep: Endpoint, ok: bool, changed: bool) -> None:
        self.events.append((ok, changed, ep.healthy))


async def test_probe_reports_status_refusal_and_timeout():
    async with pods("127.91.0.1") as (p,):
        assert await http_probe(p.ip, PORT, "/healthz", "svc", 1.0) == 200
        assert p.hits == [("/healthz", "svc")]
        p.status = 503
        assert await http_probe(p.ip, PORT, "/x", "svc", 1.0) == 503
        p.delay = 0.15
        assert await http_probe(p.ip, PORT, "/x", "svc", 0.05) is None
    assert await http_probe("127.91.0.1", PORT, "/", "svc", 1.0) is None  # refused


async def test_one_success_marks_a_new_endpoint_healthy():
    async with pods("127.91.1.1") as (p,):
        rec = Recorder()
        hc = HealthChecker(rec)
        ep = Endpoint("a", p.ip, PORT)
        hc.set(ep, HealthCheckPolicy(interval=0.03, timeout=0.5, healthy_threshold=5), "web")
        assert ep.healthy is None  # counts as healthy until the first check completes
        await eventually(lambda: ep.healthy is True, within=1.0)
        assert rec.events[0] == (True, True, True)
        await hc.stop()


async def test_a_new_endpoint_failing_its_first_check_is_unhealthy_at_once():
    async with pods("127.91.1.2") as (p,):
        p.status = 500
        rec = Recorder()
        hc = HealthChecker(rec)
        ep = Endpoint("a", p.ip, PORT)
        hc.set(ep, FAST, "web")
        await eventually(lambda: ep.healthy is False, within=1.0)
        assert rec.events[0] == (False, True, False)
        assert hc.results[("a", "failure")] >= 1
        await hc.stop()


async def test_thresholds_flip_unhealthy_and_back_against_a_real_server():
    async with pods("127.91.1.3") as (p,):
        rec = Recorder()
        hc = HealthChecker(rec)
        ep = Endpoint("a", p.ip, PORT)
        hc.set(ep, FAST, "web")
        await eventually(lambda: ep.healthy is True, within=1.0)
        mark = len(rec.events)
        p.status = 500
        await eventually(lambda: ep.healthy is False, within=1.0)
        after = rec.events[mark:]
        first_fail = next(i for i, e in enumerate(after) if not e[0])
        flip = next(i for i, e in enumerate(after) if e[1])
        assert flip - first_fail == 2  # the 3rd consecutive failure flips it
        assert all(not e[0] for e in after[first_fail:flip + 1])
        mark = len(rec.events)
        p.status = 200
        await eventually(lambda: ep.healthy is True, within=1.0)
        after = rec.events[mark:]
        first_ok = next(i for i, e in enumerate(after) if e[0])
        flip = next(i for i, e in enumerate(after) if e[1])
        assert flip - first_ok == 1  # the 2nd consecutive success
        assert hc.transitions[("a", "unhealthy")] == 1 and hc.transitions[("a", "healthy")] == 2
        await hc.stop()


async def test_expected_statuses_timeout_and_removal_stop_checks():
    async with pods("127.91.1.4") as (p,):
        hc = HealthChecker()
        ep = Endpoint("a", p.ip, PORT)
        p.status = 204
        policy = HealthCheckPolicy(path="/ready", interval=0.03, timeout=0.1, expected_statuses=(204,))
        hc.set(ep, policy, "web.demo")
        await eventually(lambda: ep.healthy is True, within=1.0)
        assert p.hits[0] == ("/ready", "web.demo")
        p.delay = 0.15  # slower than the timeout: failures
        await eventually(lambda: ep.healthy is False, within=2.0)
        hc.remove(ep)
        assert ep.healthy is None and ep not in hc
        await asyncio.sleep(0.2)  # let an in-flight slow request finish
        seen = len(p.hits)
        await asyncio.sleep(0.15)
        assert len(p.hits) == seen
        await hc.stop()


# ---------------------------------------------------------------------- through the manager


async def cluster_with(ips: list[str]) -> EmbeddedCluster:
    c = EmbeddedCluster("a", service_cidr="10.60.0.0/16", bookmark_interval=0)
    await c.create(NAMESPACES, namespace("demo"))
    await c.create(SERVICES, service("web", "demo"))
    await c.create(ENDPOINT_SLICES, source_slice("web", "demo", [endpoint(ip) for ip in ips],
                                                 ports=[{"name": "http", "port": PORT, "protocol": "TCP"}]))
    return c


WEB = BackendRef("demo", "web", 80)


def health_of(mgr: UpstreamManager, ip: str) -> bool | None:
    return next(d["healthy"] for d in mgr.describe(WEB) if d["ip"] == ip)


async def test_manager_routes_around_unhealthy_endpoints_and_stops_checks_for_gone_ones():
    ips = ["127.91.2.1", "127.91.2.2", "127.91.2.3"]
    async with pods(*ips) as ps:
        c = await cluster_with(ips)
        mgr = UpstreamManager({"a": c})
        try:
            await mgr.start()
            mgr.sync({WEB: BackendPolicy(health_check=FAST)})
            await eventually(lambda: all(d["healthy"] is True for d in mgr.describe(WEB)), within=1.0)
            assert {p.hits[0][1] for p in ps} == {"web"}  # default Host: the Service's name
            ps[0].status = 500
            await eventually(lambda: mgr.describe(WEB)[0]["healthy"] is False, within=1.0)
            assert {mgr.pick(WEB, REQ).ip for _ in range(20)} == {ips[1], ips[2]}
            ps[0].status = 200
            await eventually(lambda: {mgr.pick(WEB, REQ).ip for _ in range(6)} == set(ips), within=1.0)
            assert mgr.counters()["health_checks_total"][("a", "failure")] >= 3
            # Endpoint removed from the slice: its checks stop.
            s = (await c.list(ENDPOINT_SLICES, namespace="demo")).items[0]
            s["endpoints"] = [endpoint(ip) for ip in ips[1:]]
            await c.replace(ENDPOINT_SLICES, s)
            await eventually(lambda: mgr.gauges()["health_checked"] == 2, within=1.0)
            await asyncio.sleep(0.05)
            seen = len(ps[0].hits)
            await asyncio.sleep(0.15)
            assert len(ps[0].hits) == seen and len(ps[1].hits) > 3
            # Host override from the policy.
            mgr.sync({WEB: BackendPolicy(health_check=HealthCheckPolicy(
                interval=0.03, timeout=0.5, host="probe.example"))})
            await eventually(lambda: ps[1].hits[-1][1] == "probe.example", within=1.0)
            # A route table without health checks: checks stop, verdicts are forgotten.
            ps[1].status = 500
            await eventually(lambda: health_of(mgr, ips[1]) is False, within=1.0)
            mgr.sync({WEB: BackendPolicy()})
            assert mgr.gauges()["health_checked"] == 0
            assert [d["healthy"] for d in mgr.describe(WEB)] == [None, None]
            # ... and a table without the backend at all forgets its endpoints.
            mgr.sync({WEB: BackendPolicy(health_check=FAST)})
            await eventually(lambda: health_of(mgr, ips[1]) is False, within=1.0)
            mgr.sync({})
            assert mgr.gauges()["health_checked"] == 0 and mgr.catalog.interned("a", ips[1], PORT) is None
            # The checked backend dropped while another one keeps the same pods: checks stop.
            in_a = BackendRef("demo", "web", 80, cluster="a")
            mgr.sync({WEB: BackendPolicy(health_check=FAST), in_a: BackendPolicy()})
            await eventually(lambda: health_of(mgr, ips[1]) is False, within=1.0)
            mgr.sync({in_a: BackendPolicy()})
            assert mgr.gauges()["health_checked"] == 0
            assert {mgr.pick(in_a, REQ).ip for _ in range(4)} == set(ips[1:])
        finally:
            await mgr.stop()


async def test_successful_active_check_unejects():
    ips = ["127.91.3.1", "127.91.3.2"]
    async with pods(*ips):
        c = await cluster_with(ips)
        mgr = UpstreamManager({"a": c})
        try:
            await mgr.start()
            outlier = OutlierPolicy(base_ejection_time=30, max_ejection_percent=100)
            policy = BackendPolicy(health_check=HealthCheckPolicy(interval=0.2, timeout=0.5), outlier=outlier)
            mgr.sync({WEB: policy})
            ep = mgr.pick(WEB, REQ)
            await eventually(lambda: ep.healthy is True, within=1.0)
            for _ in range(5):
                mgr.report(ep, "http_5xx", 500)
            assert mgr.describe(WEB)[ips.index(ep.ip)]["ejected"] is True
            assert {mgr.pick(WEB, REQ).ip for _ in range(6)} == set(ips) - {ep.ip}
            # The server is fine: the next check (<= 0.22 s) puts it back, long before 30 s.
            await eventually(lambda: not mgr.describe(WEB)[ips.index(ep.ip)]["ejected"], within=1.0)
            assert {mgr.pick(WEB, REQ).ip for _ in range(6)} == set(ips)
            assert mgr.counters()["ejections_total"] == {"a": 1}
        finally:
            await mgr.stop()
