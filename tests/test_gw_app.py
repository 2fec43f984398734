"""The gateway process: Ingresses in the hub and endpoints in the members, through real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from fleetkit import endpoint, eventually, source_slice
from gwkit import Upstream
from netkit import free_port

import gateway.app as gateway_app
from gateway.app import GatewayApp
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import (
    ENDPOINT_SLICES,
    EVENTS,
    INGRESSES,
    NAMESPACES,
    SERVICES,
)
from mcs_controller.access.served import serve_cluster

ANN = "multicluster.amcs.dev/"


def ingress(name: str, host: str, service: str, annotations: dict | None = None,
            class_name: str | None = "amcs") -> dict:
    spec: dict = {"rules": [{"host": host, "http": {"paths": [{
        "path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": service, "port": {"number": 80}}}}]}}]}
    if class_name:
        spec["ingressClassName"] = class_name
    return {"metadata": {"name": name, "namespace": "demo", "annotations": annotations or {}},
            "spec": spec}


async def world(upstreams: dict[str, Upstream]) -> tuple[EmbeddedCluster, dict[str, EmbeddedCluster]]:
    """A hub and one member per upstream, each member's `web` Service backed by that upstream."""
    hub = EmbeddedCluster("hub")
    await hub.create(NAMESPACES, {"metadata": {"name": "demo"}})
    members = {}
    for i, (name, up) in enumerate(upstreams.items()):
        c = EmbeddedCluster(name, service_cidr=f"10.{60 + i}.0.0/16")
        await c.create(NAMESPACES, {"metadata": {"name": "demo"}})
        await c.create(SERVICES, {"metadata": {"name": "web", "namespace": "demo"},
                                  "spec": {"selector": {"app": "web"},
                                           "ports": [{"name": "http", "port": 80, "targetPort": up.port}]}})
        await c.create(ENDPOINT_SLICES, source_slice("web", "demo", [endpoint(up.host)],
                                                     ports=[{"name": "http", "port": up.port}]))
        members[name] = c
    return hub, members


@contextlib.asynccontextmanager
async def gateway_over(ingresses: list[dict], upstream_ip: str, admin: bool = False,
                       **kw: object) -> AsyncIterator[tuple[GatewayApp, Upstream]]:
    """A gateway serving `ingresses` of a hub whose one member ("east") has the `web`
    Service backed by an upstream on `upstream_ip`; both stopped at the end."""
    up = await Upstream("east", host=upstream_ip).start()
    try:
        hub, members = await world({"east": up})
        for ing in ingresses:
            await hub.create(INGRESSES, ing)
        app = GatewayApp(hub, members, listen=("127.0.0.1", 0),
                         admin=("127.0.0.1", 0) if admin else None, **kw)  # type: ignore[arg-type]
        await app.start()
        try:
            await app.wait_ready(10)
            yield app, up
        finally:
            await app.stop(0.5)
    finally:
        await up.stop()


async def get(url: str, host: str, headers: dict | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Host": host, **(headers or {})}) as r:
        return r.status, await r.text()


async def test_ingress_changes_apply_within_a_second_and_admin_shows_routes_and_metrics():
    ups = {c: await Upstream(c, host=f"127.0.{70 + i}.1").start() for i, c in enumerate(("east", "west"))}
    hub, members = await world(ups)
    app = GatewayApp(hub, members, listen=("127.0.0.1", 0), admin=("127.0.0.1", 0))
    await app.start()
    try:
        await app.wait_ready()
        url = f"http://127.0.0.1:{app.proxy.port}/hello"
        assert (await get(url, "shop.example.com"))[0] == 404
        await hub.create(INGRESSES, ingress("shop", "shop.example.com", "web",
                                            {f"{ANN}cluster-header": "x-mcs-cluster"}))
        # another controller's Ingress is ignored
        await hub.create(INGRESSES, ingress("other", "other.example.com", "web", class_name="nginx"))
        loop = asyncio.get_running_loop()
        start = loop.time()
        await eventually(lambda: _status_is(url, "shop.example.com", 200), within=1.0)
        assert loop.time() - start < 1.0
        assert (await get(url, "other.example.com"))[0] == 404
        # header routing to a named cluster
        for cluster in ("east", "west"):
            await get(url, "shop.example.com", {"x-mcs-cluster": cluster})
            assert ups[cluster].requests[-1].path == "/hello"
        # a bad annotation is reported and ignored, the rest keeps serving
        await hub.patch(INGRESSES, "demo", "shop", {"metadata": {"annotations": {
            f"{ANN}cluster-weights": "east=fifty"}}})
        await eventually(lambda: app.problems, within=1.0)
        assert (await get(url, "shop.example.com"))[0] == 200
        admin = f"http://127.0.0.1:{app.admin_port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{admin}/routes") as r:
                routes = await r.json()
            async with s.get(f"{admin}/metrics") as r:
                metrics = await r.text()
            async with s.get(f"{admin}/readyz") as r:
                assert r.status == 200
        assert any("cluster-weights" in p for p in routes["problems"])
        events = (await hub.list(EVENTS, "demo")).items
        assert [(e["reason"], e["involvedObject"]["name"], e["type"]) for e in events] == [
            ("AnnotationIgnored", "shop", "Warning")]
        assert "cluster-weights" in events[0]["message"]
        clusters = {ep["cluster"] for b in routes["backends"] for ep in b["endpoints"]}
        assert clusters == {"east", "west"}
        assert 'gateway_requests_total{cluster="east",route="demo/shop|shop.example.com/",status="200"}' in metrics
        assert "gateway_active_connections" in metrics and "gateway_endpoints" in metrics
        # the latency histogram counts every proxied request once, in cumulative buckets
        samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in metrics.splitlines() if line and not line.startswith("#")}
        served = sum(v for k, v in samples.items() if k.startswith("gateway_requests_total{")
                     and 'cluster=""' not in k)
        counts = sum(v for k, v in samples.items() if k.startswith("gateway_upstream_latency_seconds_count"))
        inf = sum(v for k, v in samples.items()
                  if k.startswith("gateway_upstream_latency_seconds_bucket") and 'le="+Inf"' in k)
        assert served >= 2 and counts == inf == served
        buckets = [v for k, v in samples.items() if k.startswith("gateway_upstream_latency_seconds_bucket")
                   and 'cluster="east"' in k]
        assert buckets == sorted(buckets) and buckets[-1] >= 1
    finally:
        await app.stop()
        for up in ups.values():
            await up.stop()


async def _status_is(url: str, host: str, status: int) -> bool:
    return (await get(url, host))[0] == status


@contextlib.asynccontextmanager
async def gateway_process(tmp_path: Path, *flags: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, int, Upstream]]:
    """`python -m gateway` against a hub and one member served over the Kubernetes API, the
    shop.example.com route serving: (process, port, admin port, the upstream)."""
    ups = {"east": await Upstream("east", host="127.0.72.1").start()}
    hub, members = await world(ups)
    await hub.create(INGRESSES, ingress("shop", "shop.example.com", "web"))
    servers = {name: await serve_cluster(c, "127.0.0.1", 0) for name, c in {"hub": hub, **members}.items()}
    config = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}
    for name, server in servers.items():
        for key, items in server.kubeconfig(name).items():
            if isinstance(items, list):
                config[key] += items
    config["current-context"] = "hub"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump({
        "kubeconfig": str(tmp_path / "kubeconfig"), "hub": {"context": "hub"},
        "clusters": [{"name": "east", "context": "east"}]}))
    port, admin = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(tmp_path / "fleet.yaml"),
        "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert b"gateway listening on http 127.0.0.1:" in line, line
        await eventually(lambda: _status_is(f"http://127.0.0.1:{port}/x", "shop.example.com", 200),
                         within=10.0)
        yield proc, port, admin, ups["east"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for server in servers.values():
            await server.stop()
        await ups["east"].stop()


async def test_gateway_process_through_the_kubernetes_api(tmp_path: Path):
    async with gateway_process(tmp_path, "--busy-poll-us", "200", "--shutdown-delay", "0") as (
            proc, _, _, upstream):
        assert upstream.requests[-1].path == "/x"
        proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == 0, (await proc.stderr.read()).decode()[-2000:]


async def _http(port: int, request: bytes, reader_writer=None) -> tuple[bytes, tuple]:
    """One request on a kept connection (or a new one): the response head and the pair."""
    reader, writer = reader_writer or await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return head, (reader, writer)


async def test_sigterm_drains_first_then_stops(tmp_path: Path):
    """SIGTERM: for --shutdown-delay /readyz fails and connections close after their
    response, while new ones are still served; then the process stops (exit 0). A second
    SIGTERM cuts the delay short."""
    get = b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n"
    async with gateway_process(tmp_path, "--shutdown-delay", "1.5") as (proc, port, admin, _):
        head, (reader, writer) = await _http(port, get)  # a kept-alive client, idle now
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()
        start = time.monotonic()
        proc.terminate()
        assert await reader.read() == b""  # the idle connection is closed
        writer.close()
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/readyz") as r:
            assert r.status == 503 and "shutting down" in await r.text()
        head, (_, writer) = await _http(port, get)  # a new client is still served
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
        writer.close()
        await asyncio.wait_for(proc.wait(), 10)
        assert time.monotonic() - start >= 1.4 and proc.returncode == 0
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    async with gateway_process(tmp_path, "--shutdown-delay", "60") as (proc, port, admin, _):
        start = time.monotonic()
        proc.terminate()
        async with aiohttp.ClientSession() as s:
            await eventually(lambda: _readyz_is(s, admin, 503), within=5.0)
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        assert time.monotonic() - start < 10 and proc.returncode == 0


async def _readyz_is(s: aiohttp.ClientSession, admin: int, status: int) -> bool:
    async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
        return r.status == status


def test_cli_refuses_a_bad_busy_poll_window(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "gateway", "--config", str(tmp_path / "f.yaml"),
                           "--busy-poll-us", "-5"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--busy-poll-us: between 0 and 1000000" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_rebuild_runs_beside_the_data_path_and_a_change_meanwhile_is_not_lost(monkeypatch):
    """A build (held here, as a big fleet's would take long) runs in the builder thread: the
    old table keeps serving meanwhile, and an Ingress created during it gets its own build."""
    held, release, finished = threading.Event(), threading.Event(), threading.Event()
    threads: list[str] = []
    compile_now = GatewayApp._compile

    def slow_compile(inputs: tuple) -> tuple:
        threads.append(threading.current_thread().name)
        held.set()
        release.wait(5)
        finished.set()
        held.clear()
        return compile_now(inputs)

    async with gateway_over([ingress("shop", "shop.example.com", "web")], "127.0.74.1") as (app, _):
        try:
            monkeypatch.setattr(GatewayApp, "_compile", staticmethod(slow_compile))
            url = f"http://127.0.0.1:{app.proxy.port}/"
            await app.hub.create(INGRESSES, ingress("blog", "blog.example.com", "web"))
            await eventually(held.is_set, within=2.0)
            assert (await get(url, "shop.example.com"))[0] == 200  # served while the build is held
            assert (await get(url, "blog.example.com"))[0] == 404  # not installed yet
            assert not finished.is_set()
            await app.hub.create(INGRESSES, ingress("news", "news.example.com", "web"))
            await asyncio.sleep(0.2)  # (past the rebuild delay: it must wait for the running one)
            release.set()
            await eventually(lambda: _status_is(url, "news.example.com", 200), within=2.0)
            assert (await get(url, "blog.example.com"))[0] == 200
            assert len(threads) == 2 and all(t.startswith("route-build") for t in threads)
        finally:
            release.set()


async def test_certificates_are_recomputed_in_the_builder_thread(monkeypatch):
    """With the HTTPS listener, each build first recomputes host -> certificate from every
    Ingress (base64, hashes, new certificates parsed): that runs in the builder thread too,
    and the HSTS hosts follow the new table."""
    from gateway.tls import CertificateStore
    ran_in: list[str] = []
    update_now = CertificateStore.update

    def update(self, ingresses, secret):
        ran_in.append(threading.current_thread().name)
        return update_now(self, ingresses, secret)

    shop = ingress("shop", "shop.example.com", "web")
    async with gateway_over([shop], "127.0.74.3", listen_tls=("127.0.0.1", 0)) as (app, _):
        assert app.proxy_tls is not None and app.proxy_tls.hsts_for is not None
        assert not app.proxy_tls.hsts_for("blog.example.com")
        monkeypatch.setattr(CertificateStore, "update", update)
        blog = ingress("blog", "blog.example.com", "web")
        blog["spec"]["tls"] = [{"hosts": ["blog.example.com"]}]  # the default certificate
        await app.hub.create(INGRESSES, blog)
        await eventually(lambda: app.proxy_tls.hsts_for("blog.example.com"), within=2.0)
        assert ran_in and all(name.startswith("route-build") for name in ran_in)


async def test_a_failed_build_keeps_the_table_that_serves(monkeypatch, caplog):
    compile_now = GatewayApp._compile
    failures = [RuntimeError("boom")]

    def failing_once(inputs: tuple) -> tuple:
        if failures:
            raise failures.pop()
        return compile_now(inputs)

    async with gateway_over([ingress("shop", "shop.example.com", "web")], "127.0.74.2") as (app, _):
        monkeypatch.setattr(GatewayApp, "_compile", staticmethod(failing_once))
        url = f"http://127.0.0.1:{app.proxy.port}/"
        await app.hub.create(INGRESSES, ingress("blog", "blog.example.com", "web"))
        await eventually(lambda: "route table build failed" in caplog.text, within=2.0)
        assert "boom" in caplog.text
        assert (await get(url, "shop.example.com"))[0] == 200
        assert (await get(url, "blog.example.com"))[0] == 404
        await app.hub.create(INGRESSES, ingress("news", "news.example.com", "web"))
        await eventually(lambda: _status_is(url, "news.example.com", 200), within=2.0)
        assert (await get(url, "blog.example.com"))[0] == 200


async def test_metrics_are_encoded_off_the_event_loop_while_requests_flow():
    """A scrape of a big fleet's per-route histograms takes long: it runs in a worker thread
    (every collector reads its state with atomic copies), and stays whole meanwhile."""
    ran_in: list[str] = []

    class Probe:
        def describe(self):  # (else registering it would collect once, here)
            return []

        def collect(self):
            ran_in.append(threading.current_thread().name)
            return iter(())

    async with gateway_over([ingress("shop", "shop.example.com", "web")], "127.0.74.3",
                            admin=True) as (app, up):
        app.registry.register(Probe())
        url = f"http://127.0.0.1:{app.proxy.port}/"
        for i in range(300):  # routes the scrapes below race with
            app.metrics.observe(f"demo/r{i}|h{i}.example.com/", "east", 200, 0.001)
        scrapes = []

        async def scrape() -> None:
            async with aiohttp.ClientSession() as s, s.get(
                    f"http://127.0.0.1:{app.admin_port}/metrics") as r:
                scrapes.append((r.status, await r.text()))

        async def traffic() -> None:
            for _ in range(20):
                assert (await get(url, "shop.example.com"))[0] == 200

        await asyncio.gather(traffic(), *(scrape() for _ in range(5)))
        # /routes is written off the loop too
        dumped_in: list[str] = []
        dumps = gateway_app._dumps

        def recording_dumps(obj: object) -> str:
            dumped_in.append(threading.current_thread().name)
            return dumps(obj)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(gateway_app, "_dumps", recording_dumps)
            async with aiohttp.ClientSession() as s, s.get(
                    f"http://127.0.0.1:{app.admin_port}/routes") as r:
                assert r.status == 200 and r.content_type == "application/json"
                routes = await r.json()
        assert [ro["host"] for ro in routes["routes"]] == ["shop.example.com"]
        assert dumped_in and threading.main_thread().name not in dumped_in
        assert ran_in and all(name != threading.main_thread().name for name in ran_in)
        assert [status for status, _ in scrapes] == [200] * 5
        last = scrapes[-1][1]
        assert 'gateway_upstream_latency_seconds_count{cluster="east",route="demo/r299|h299.example.com/"} 1.0' in last
        assert "gateway_endpoints" in last


async def test_a_rebuild_parses_only_the_changed_ingress_and_serves_every_route():
    """Three Ingresses; one's host is edited: the next build parses that one and reuses the
    two others' parses (gateway/routing/reuse.py), and all three serve."""
    shops = [ingress(name, f"{name}.example.com", "web") for name in ("shop", "blog", "news")]
    async with gateway_over(shops, "127.0.74.1") as (app, _):
        url = f"http://127.0.0.1:{app.proxy.port}/"
        reuse = app.build_options.reuse
        assert reuse is not None and reuse.parsed == 3
        table = app.table
        await app.hub.patch(INGRESSES, "demo", "blog", [
            {"op": "replace", "path": "/spec/rules/0/host", "value": "blog.example.org"}],
            patch_type="json")
        await eventually(lambda: app.table is not table, within=1.0)
        assert (reuse.parsed, reuse.reused) == (1, 2)
        for host, status in (("shop.example.com", 200), ("news.example.com", 200),
                             ("blog.example.org", 200), ("blog.example.com", 404)):
            assert (await get(url, host))[0] == status, host


async def test_a_problem_is_reported_once_and_not_again_by_later_builds(caplog):
    """Logged and recorded as an Event when it first shows up; the builds after it (worked
    out in the builder thread) report only problems that are new."""
    bad = ingress("shop", "shop.example.com", "web", {
        "nginx.ingress.kubernetes.io/load-balance": "nope"})
    async with gateway_over([bad], "127.0.74.4") as (app, _):
        table = app.table
        await app.hub.create(INGRESSES, ingress("blog", "blog.example.com", "web", {
            "nginx.ingress.kubernetes.io/load-balance": "worse"}))
        await eventually(lambda: app.table is not table, within=1.0)
        table = app.table
        await app.hub.create(INGRESSES, ingress("news", "news.example.com", "web"))
        await eventually(lambda: app.table is not table, within=1.0)
        assert caplog.text.count("unknown algorithm 'nope'") == 1
        assert caplog.text.count("unknown algorithm 'worse'") == 1
        assert len(app.problems) == 2

        async def events() -> list[str]:
            return sorted(e["involvedObject"]["name"]
                          for e in (await app.hub.list(EVENTS, "demo")).items)
        async with asyncio.timeout(2):
            while await events() != ["blog", "shop"]:  # noqa: ASYNC110 (polled)
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert await events() == ["blog", "shop"]


async def test_a_default_backend_service_created_later_is_used_within_a_second():
    """default-backend names a Service no member has yet (reported); once it appears the
    table is rebuilt (no Ingress event) and it serves the rule whose Service has no endpoint."""
    ups = {"east": await Upstream("east", host="127.0.72.1").start()}
    spare = await Upstream("spare", host="127.0.72.2").start()
    hub, members = await world(ups)
    await hub.create(INGRESSES, ingress("gone", "gone.example.com", "nothing", {
        "nginx.ingress.kubernetes.io/default-backend": "spare"}))
    app = GatewayApp(hub, members, listen=("127.0.0.1", 0), admin=None)
    await app.start()
    try:
        await app.wait_ready(10)
        assert any("spare" in str(p) for p in app.problems)
        url = f"http://127.0.0.1:{app.proxy.port}/"
        assert (await get(url, "gone.example.com"))[0] != 200
        east = members["east"]
        await east.create(SERVICES, {"metadata": {"name": "spare", "namespace": "demo"},
                                     "spec": {"selector": {"app": "spare"},
                                              "ports": [{"name": "http", "port": 80,
                                                         "targetPort": spare.port}]}})
        await east.create(ENDPOINT_SLICES, source_slice("spare", "demo", [endpoint("127.0.72.2")],
                                                        ports=[{"name": "http", "port": spare.port}]))

        async def served() -> bool:
            status, text = await get(url, "gone.example.com")
            return status == 200 and "spare" in text
        await eventually(served, within=1.0)
        assert not any("spare" in str(p) for p in app.problems)
    finally:
        await app.stop(0.5)
        await ups["east"].stop()
        await spare.stop()


async def test_global_default_backend_answers_unmatched_requests():
    """--default-backend-service demo/web: a host no Ingress names is proxied to it, not 404."""
    async with gateway_over([ingress("shop", "shop.example.com", "web")], "127.0.73.1",
                            admin=True, default_backend="demo/web") as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}/anything"
        status, text = await get(url, "nobody.example.com")
        assert status == 200 and '"server": "east"' in text
        assert up.requests[-1].path == "/anything"
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{app.admin_port}/routes") as r:
            routes = await r.json()
        assert routes["defaultBackend"]["backend"] == "demo/web:80"


def test_cli_refuses_a_bad_default_backend_service(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "gateway", "--config", str(tmp_path / "f.yaml"),
                           "--default-backend-service", "just-a-name"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "expected NAMESPACE/NAME" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_hsts_flags_make_the_header_value(tmp_path: Path):
    from gateway.__main__ import hsts_value, parse_args
    cfg = ["--config", str(tmp_path / "f.yaml")]
    assert hsts_value(parse_args(cfg)) == "max-age=31536000; includeSubDomains"
    assert hsts_value(parse_args([*cfg, "--hsts-max-age", "600", "--hsts-preload",
                                  "--hsts-include-subdomains", "false"])) == "max-age=600; preload"
    assert hsts_value(parse_args([*cfg, "--hsts-max-age", "0"])) == ""
    done = subprocess.run([sys.executable, "-m", "gateway", *cfg, "--hsts-max-age", "-1"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--hsts-max-age: must be >= 0" in done.stderr
