"""Ops plumbing: metrics exposition, admin probes over real sockets, structured logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcs_controller.ops.admin import AdminServer
from mcs_controller.ops.logs import kv, setup_logging
from mcs_controller.ops.metrics import ControllerMetrics, new_registry


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers.get("Content-Type", "")


# -- metrics -------------------------------------------------------------------------------


def test_several_instances_do_not_collide() -> None:
    a, b = ControllerMetrics(), ControllerMetrics()
    a.queue_depth.set(3)
    b.queue_depth.set(7)
    assert _samples(a.exposition().decode())[("mcs_controller_queue_depth", ())] == 3
    assert _samples(b.exposition().decode())[("mcs_controller_queue_depth", ())] == 7


def test_count_write_rejects_unknown_verb() -> None:
    m = ControllerMetrics(new_registry(process=False))
    with pytest.raises(ValueError):
        m.count_write("c1", "Service", "upsert")


def test_time_reconcile_counts_errors() -> None:
    m = ControllerMetrics(new_registry(process=False))
    with m.time_reconcile():
        pass
    with pytest.raises(RuntimeError), m.time_reconcile():
        raise RuntimeError("boom")
    s = _samples(m.exposition().decode())
    assert s[("mcs_controller_reconciles_total", (("result", "success"),))] == 1
    assert s[("mcs_controller_reconciles_total", (("result", "error"),))] == 1
    assert s[("mcs_controller_reconcile_errors_total", ())] == 1
    assert s[("mcs_controller_reconcile_duration_seconds_count", ())] == 2


async def test_metrics_endpoint_serves_updated_values() -> None:
    m = ControllerMetrics()
    m.observe_reconcile("success", 0.002)
    m.observe_reconcile("requeue", 0.004)
    m.queue_depth.set(5)
    m.count_write("c1", "EndpointSlice", "create")
    m.count_write("c1", "EndpointSlice", "create")
    m.count_write("c2", "ServiceImport", "patch")
    m.observe_propagation(seen_at=10.0, done_at=10.003)
    m.set_cluster_reachable("c1", True)
    m.set_cluster_reachable("c2", False)
    m.set_leader(True)
    m.set_informer_synced("c1", "endpointslices", True)

    server = AdminServer("127.0.0.1", 0, m.registry, ready=lambda: True)
    port = await server.start()
    try:
        assert port > 0 and server.url == f"http://127.0.0.1:{port}"
        status, text, ctype = await _get(f"{server.url}/metrics")
        assert status == 200
        assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
        s = _samples(text)
        assert s[("mcs_controller_reconciles_total", (("result", "success"),))] == 1
        assert s[("mcs_controller_reconciles_total", (("result", "requeue"),))] == 1
        assert s[("mcs_controller_reconcile_errors_total", ())] == 0
        assert s[("mcs_controller_queue_depth", ())] == 5
        key = (("cluster", "c1"), ("kind", "EndpointSlice"), ("verb", "create"))
        assert s[("mcs_controller_writes_total", key)] == 2
        key = (("cluster", "c2"), ("kind", "ServiceImport"), ("verb", "patch"))
        assert s[("mcs_controller_writes_total", key)] == 1
        # 3 ms lands in the 5 ms bucket, not in the 2.5 ms one; buckets span 1 ms .. 10 s.
        prop = "mcs_controller_propagation_latency_seconds_bucket"
        assert s[(prop, (("le", "0.0025"),))] == 0
        assert s[(prop, (("le", "0.005"),))] == 1
        assert (prop, (("le", "0.001"),)) in s and (prop, (("le", "10.0"),)) in s
        assert s[("mcs_controller_cluster_reachable", (("cluster", "c1"),))] == 1
        assert s[("mcs_controller_cluster_reachable", (("cluster", "c2"),))] == 0
        assert s[("mcs_controller_is_leader", ())] == 1
        key = (("cluster", "c1"), ("resource", "endpointslices"))
        assert s[("mcs_controller_informer_synced", key)] == 1
        assert ("process_resident_memory_bytes", ()) in s

        # A later change shows up in the next scrape.
        m.set_leader(False)
        m.queue_depth.inc()
        _, text, _ = await _get(f"{server.url}/metrics")
        s = _samples(text)
        assert s[("mcs_controller_is_leader", ())] == 0
        assert s[("mcs_controller_queue_depth", ())] == 6

        # OpenMetrics on request, as Prometheus asks for it.
        _, text, ctype = await _get(
            f"{server.url}/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert ctype.startswith("application/openmetrics-text")
        assert text.rstrip().endswith("# EOF")
    finally:
        await server.stop()


# -- probes --------------------------------------------------------------------------------


async def test_readyz_flips_and_reports_reason() -> None:
    state: dict[str, object] = {"ready": (False, "informers not synced: c2/endpointslices")}
    server = AdminServer("127.0.0.1", 0, new_registry(process=False), ready=lambda: state["ready"])
    await server.start()
    try:
        status, text, _ = await _get(f"{server.url}/readyz")
        assert status == 503 and "informers not synced: c2/endpointslices" in text
        state["ready"] = False
        status, text, _ = await _get(f"{server.url}/readyz")
        assert status == 503 and text.strip() == "not ready"
        state["ready"] = True
        status, text, _ = await _get(f"{server.url}/readyz")
        assert (status, text.strip()) == (200, "ok")
        state["ready"] = (True, "")
        assert (await _get(f"{server.url}/readyz"))[0] == 200
    finally:
        await server.stop()


async def test_healthz_and_failing_or_async_probes() -> None:
    healthy = {"ok": True}

    def boom() -> bool:
        raise RuntimeError("store closed")

    async def async_ready() -> tuple[bool, str]:
        await asyncio.sleep(0)
        return healthy["ok"], "event loop stalled"

    server = AdminServer(
        "127.0.0.1", 0, new_registry(process=False), ready=async_ready, healthy=lambda: healthy["ok"]
    )
    await server.start()
    try:
        assert (await _get(f"{server.url}/healthz"))[:2] == (200, "ok\n")
        assert (await _get(f"{server.url}/readyz"))[0] == 200
        healthy["ok"] = False
        status, text, _ = await _get(f"{server.url}/healthz")
        assert status == 500 and text.strip() == "unhealthy"
        status, text, _ = await _get(f"{server.url}/readyz")
        assert status == 503 and "event loop stalled" in text
        assert (await _get(f"{server.url}/nope"))[0] == 404
    finally:
        await server.stop()

    broken = AdminServer("127.0.0.1", 0, new_registry(process=False), ready=boom, healthy=boom)
    await broken.start()
    try:
        status, text, _ = await _get(f"{broken.url}/healthz")
        assert status == 500 and "store closed" in text
        status, text, _ = await _get(f"{broken.url}/readyz")
        assert status == 503 and "store closed" in text
    finally:
        await broken.stop()


async def test_stop_closes_the_port() -> None:
    server = AdminServer("127.0.0.1", 0, new_registry(process=False), ready=lambda: True)
    port = await server.start()
    assert (await _get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
    await server.stop()
    await server.stop()  # twice is fine
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(f"http://127.0.0.1:{port}/healthz")


# -- logs ----------------------------------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_json_lines_carry_extra_fields(root_logger: logging.Logger) -> None:
    buf = io.StringIO()
    setup_logging("debug", "json", stream=buf)
    log = logging.getLogger("mcs_controller.test")
    log.info(
        "mirrored %d slices",
        3,
        extra=kv(cluster="c1", namespace="default", name="svc1", key="default/svc1"),
    )
    log.debug("debug shows at debug level")
    try:
        raise ValueError("bad port")
    except ValueError:
        log.exception("reconcile failed", extra={"cluster": "c2", "obj": object()})
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert TS.match(first["ts"])
    assert first["level"] == "info"
    assert first["logger"] == "mcs_controller.test"
    assert first["msg"] == "mirrored 3 slices"
    assert (first["cluster"], first["namespace"], first["name"], first["key"]) == (
        "c1", "default", "svc1", "default/svc1",
    )
    assert lines[1]["level"] == "debug"
    assert lines[2]["level"] == "error" and "ValueError: bad port" in lines[2]["exc"]
    assert lines[2]["cluster"] == "c2"  # plain extra= works too
    assert lines[2]["obj"].startswith("<object object")  # non-JSON values rendered, not dropped


def test_setup_is_idempotent_and_filters_by_level(root_logger: logging.Logger) -> None:
    first, buf = io.StringIO(), io.StringIO()
    setup_logging("info", "json", stream=first)
    setup_logging("WARN", "json", stream=buf)
    log = logging.getLogger("mcs_controller.test")
    log.info("hidden")
    log.warning("shown")
    assert first.getvalue() == ""
    assert [json.loads(x)["msg"] for x in buf.getvalue().splitlines()] == ["shown"]
    with pytest.raises(ValueError):
        setup_logging("loud")
    with pytest.raises(ValueError):
        setup_logging("info", "xml")  # type: ignore[arg-type]


def test_text_mode_is_readable_with_key_values(root_logger: logging.Logger) -> None:
    buf = io.StringIO()
    setup_logging("info", "text", stream=buf)
    logging.getLogger("mcs_controller.test").warning(
        "cluster unreachable", extra={"cluster": "c1", "error": "connection refused"}
    )
    line = buf.getvalue().strip()
    ts, level, logger, rest = line.split(" ", 3)
    assert TS.match(ts) and level == "WARNING" and logger == "mcs_controller.test:"
    assert rest.strip() == 'cluster unreachable cluster=c1 error="connection refused"'
