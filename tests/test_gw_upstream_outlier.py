"""Passive outlier detection: consecutive errors, ejection time growth and decay, max ejection
percent, never the last endpoint; and through the manager, picks that follow ejections."""

from __future__ import annotations

import asyncio
import time

from fleetkit import endpoint, eventually, namespace, service, source_slice

from gateway.types import BackendPolicy, BackendRef, Endpoint, OutlierPolicy, RequestView
from gateway.upstream.manager import UpstreamManager
from gateway.upstream.outlier import OutlierDetector
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import ENDPOINT_SLICES, NAMESPACES, SERVICES

REQ = RequestView("GET", "/", "example.com", {}, "192.0.2.1")


def detector(n: int, policy: OutlierPolicy) -> tuple[OutlierDetector, list[Endpoint], list[Endpoint]]:
    eps = [Endpoint("a" if i % 2 else "b", f"10.0.0.{i + 1}", 80) for i in range(n)]
    changed: list[Endpoint] = []
    det = OutlierDetector(policy_of=lambda ep: policy, domains_of=lambda ep: [eps],
                          on_change=changed.append)
    return det, eps, changed


def ejected(ep: Endpoint) -> bool:
    return ep.ejected_until > time.monotonic()


def fail(det: OutlierDetector, ep: Endpoint, n: int, outcome="http_5xx", status: int | None = 500) -> None:
    for _ in range(n):
        det.report(ep, outcome, status)


async def test_five_consecutive_5xx_eject_and_a_success_resets_the_count():
    det, eps, changed = detector(10, OutlierPolicy())
    fail(det, eps[0], 4)
    det.report(eps[0], "success", 200)
    fail(det, eps[0], 4)
    assert not ejected(eps[0]) and changed == []
    det.report(eps[0], "http_5xx", 500)
    assert ejected(eps[0]) and changed == [eps[0]]
    assert 29.9 < eps[0].ejected_until - time.monotonic() <= 30.0
    assert det.ejections == {"b": 1}
    det.stop()


async def test_local_origin_errors_count_with_5xx():
    det, eps, _ = detector(10, OutlierPolicy())
    for outcome in ("connect_failure", "reset", "timeout", "gateway_error"):
        det.report(eps[1], outcome, None)
    assert not ejected(eps[1])
    det.report(eps[1], "http_5xx", 503)
    assert ejected(eps[1])
    # 4xx and 2xx are successes for the detector.
    fail(det, eps[2], 4)
    det.report(eps[2], "success", 404)
    fail(det, eps[2], 4)
    assert not ejected(eps[2])
    det.stop()


async def test_gateway_failure_detector_enforcement():
    only_gw = OutlierPolicy(consecutive_5xx=0, enforcing_consecutive_gateway_failure=100)
    det, eps, _ = detector(10, only_gw)
    fail(det, eps[0], 4, status=502)
    det.report(eps[0], "http_5xx", 500)  # not a gateway error: its counter restarts
    fail(det, eps[0], 4, status=504)
    assert not ejected(eps[0])
    det.report(eps[0], "connect_failure", None)
    assert ejected(eps[0])
    det.stop()
    # Default enforcement 0 %: the gateway-failure detector never ejects on its own.
    det, eps, _ = detector(10, OutlierPolicy(consecutive_5xx=0))
    fail(det, eps[0], 20, status=502)
    assert not ejected(eps[0])
    det.stop()


async def test_ejection_time_grows_is_capped_and_decays():
    policy = OutlierPolicy(base_ejection_time=0.05, max_ejection_time=0.12, interval=0.1,
                           max_ejection_percent=100)
    det, eps, changed = detector(4, policy)
    ep = eps[0]
    durations = []
    for _ in range(3):
        fail(det, ep, 5)
        durations.append(round(ep.ejected_until - time.monotonic(), 2))
        await eventually(lambda: not ejected(ep), within=1.0)
        assert ep.ejected_until == 0.0  # back in, and the manager was told
    assert durations == [0.05, 0.1, 0.12]
    assert det.times_ejected(ep) == 3
    await eventually(lambda: det.times_ejected(ep) == 2, within=0.3)
    await eventually(lambda: det.times_ejected(ep) == 0, within=0.5)
    fail(det, ep, 5)
    assert round(ep.ejected_until - time.monotonic(), 2) == 0.05  # the multiplier decayed
    assert len(changed) == 7  # 3 ejections and 3 returns, then the last ejection
    det.stop()


async def test_max_ejection_percent():
    det, eps, _ = detector(10, OutlierPolicy())  # 10 %: one of ten
    fail(det, eps[0], 5)
    fail(det, eps[1], 5)
    assert ejected(eps[0]) and not ejected(eps[1])
    assert det.refused["max_ejection_percent"] >= 1
    det.stop()
    det, eps, _ = detector(5, OutlierPolicy())  # (0+1)/5 = 20 % > 10 %: never
    fail(det, eps[0], 10)
    assert not ejected(eps[0])
    det.stop()
    det, eps, _ = detector(10, OutlierPolicy(max_ejection_percent=20))
    for ep in eps[:3]:
        fail(det, ep, 5)
    assert [ejected(ep) for ep in eps[:3]] == [True, True, False]
    det.stop()


async def test_always_eject_one_host_ejects_one_of_a_small_backend_never_two():
    """Envoy's opt-in: with five endpoints 10 % ejects none; with the flag, one goes (the
    first to fail five times), a second is refused, and never the last of two."""
    det, eps, _ = detector(5, OutlierPolicy(always_eject_one_host=True))
    fail(det, eps[0], 5)
    fail(det, eps[1], 10)
    assert [ejected(ep) for ep in eps[:2]] == [True, False]
    assert det.refused["max_ejection_percent"] >= 1
    det.stop()
    det, eps, _ = detector(2, OutlierPolicy(always_eject_one_host=True))
    fail(det, eps[0], 5)
    fail(det, eps[1], 5)
    assert [ejected(ep) for ep in eps] == [True, False] and det.refused["last_endpoint"] == 1
    det.stop()
    det, eps, _ = detector(1, OutlierPolicy(always_eject_one_host=True))
    fail(det, eps[0], 10)
    assert not ejected(eps[0])  # the only endpoint: never
    det.stop()


async def test_never_the_last_endpoint_and_refused_ejection_retried_later():
    policy = OutlierPolicy(max_ejection_percent=100, base_ejection_time=0.05)
    det, eps, _ = detector(2, policy)
    fail(det, eps[0], 5)
    fail(det, eps[1], 5)
    assert ejected(eps[0]) and not ejected(eps[1])
    assert det.refused["last_endpoint"] == 1
    await eventually(lambda: not ejected(eps[0]), within=1.0)
    det.report(eps[1], "http_5xx", 500)  # still failing: now it may go
    assert ejected(eps[1])
    det.stop()
    det, eps, _ = detector(1, policy)
    fail(det, eps[0], 50)
    assert not ejected(eps[0])
    det.stop()


# ---------------------------------------------------------------------- through the manager


async def test_manager_ejection_removes_from_picks_and_returns_after_expiry():
    clusters = {}
    for name, ips in (("a", ["10.1.0.1", "10.1.0.2"]), ("b", ["10.2.0.1", "10.2.0.2"])):
        c = EmbeddedCluster(name, bookmark_interval=0)
        await c.create(NAMESPACES, namespace("demo"))
        await c.create(SERVICES, service("web", "demo"))
        await c.create(ENDPOINT_SLICES, source_slice("web", "demo", [endpoint(ip) for ip in ips]))
        clusters[name] = c
    mgr = UpstreamManager(clusters)
    ref = BackendRef("demo", "web", 80)
    subset = BackendRef("demo", "web", 80, cluster="a")
    try:
        await mgr.start()
        policy = BackendPolicy(outlier=OutlierPolicy(base_ejection_time=0.15, max_ejection_percent=50))
        mgr.sync({ref: policy, subset: policy})
        bad = next(ep for ep in (mgr.pick(ref, REQ) for _ in range(4)) if ep.ip == "10.1.0.1")
        for _ in range(5):
            mgr.report(bad, "connect_failure")
        assert {mgr.pick(ref, REQ).ip for _ in range(12)} == {"10.1.0.2", "10.2.0.1", "10.2.0.2"}
        # The same pod behind another backend is ejected there too (one endpoint, one state).
        assert {mgr.pick(subset, REQ).ip for _ in range(4)} == {"10.1.0.2"}
        # 50 % of the Service's 4 endpoints: a second ejection is allowed, a third is not.
        others = {ep.ip: ep for ep in (mgr.pick(ref, REQ) for _ in range(3))}
        for ip in ("10.2.0.1", "10.2.0.2"):
            for _ in range(5):
                mgr.report(others[ip], "http_5xx", 500)
        assert mgr.gauges()["endpoints_ejected"] == 2
        assert {mgr.pick(ref, REQ).ip for _ in range(12)} == {"10.1.0.2", "10.2.0.2"}
        await asyncio.sleep(0.2)
        assert {mgr.pick(ref, REQ).ip for _ in range(12)} == {"10.1.0.1", "10.1.0.2", "10.2.0.1", "10.2.0.2"}
        assert mgr.outlier.refused["max_ejection_percent"] == 1
        assert mgr.counters()["ejections_total"] == {"a": 1, "b": 1}
    finally:
        await mgr.stop()
