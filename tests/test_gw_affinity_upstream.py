"""Cookie session affinity through UpstreamManager over embedded member clusters: a cookie
keeps requests on its endpoint in whichever cluster, and is replaced when that endpoint is
gone, not ready, ejected, failed by active health checks, or already tried by a retry."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from fleetkit import endpoint, eventually, namespace, service, source_slice

from gateway.routing.affinity import bind_affinity, decode_sticky, endpoint_key
from gateway.types import (
    BackendPolicy,
    BackendRef,
    HealthCheckPolicy,
    OutlierPolicy,
    RequestView,
    SessionAffinity,
)
from gateway.upstream.manager import UpstreamManager
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.errors import AlreadyExists
from mcs_controller.access.resources import ENDPOINT_SLICES, NAMESPACES, SERVICES

REQ = RequestView("GET", "/", "example.com", {}, "192.0.2.1")
WEB = BackendRef("demo", "web", 80)
PERSISTENT = bind_affinity(SessionAffinity(persistent=True), WEB, "/")
BALANCED = bind_affinity(SessionAffinity(), WEB, "/")


@contextlib.asynccontextmanager
async def members(*names: str) -> AsyncIterator[tuple[dict[str, EmbeddedCluster], UpstreamManager]]:
    clusters = {}
    for i, name in enumerate(names):
        c = EmbeddedCluster(name, service_cidr=f"10.{60 + i}.0.0/16", bookmark_interval=0)
        await c.create(NAMESPACES, namespace("demo"))
        clusters[name] = c
    mgr = UpstreamManager(clusters, informer_backoff_max=0.2)
    try:
        yield clusters, mgr
    finally:
        await mgr.stop()


async def web(c: EmbeddedCluster, ips: list, port: int = 8080) -> None:
    """Service `web` (port 80) and its one built-in slice, created or replaced."""
    with contextlib.suppress(Exception):
        await c.create(SERVICES, service("web", "demo"))
    body = source_slice("web", "demo", [ip if isinstance(ip, dict) else endpoint(ip) for ip in ips],
                        name="web-1", ports=[{"name": "http", "port": port, "protocol": "TCP"}])
    try:
        await c.create(ENDPOINT_SLICES, body)
    except AlreadyExists:
        old = await c.get(ENDPOINT_SLICES, "demo", "web-1")
        body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        await c.replace(ENDPOINT_SLICES, body)


def session(mgr: UpstreamManager, affinity=PERSISTENT, cookie: str | None = None, **kw):
    """One request: (endpoint, the cookie value the client holds afterwards)."""
    ep = mgr.pick(WEB, REQ, sticky=cookie, **kw)
    new = mgr.sticky_cookie(WEB, ep, affinity, current=cookie, retried=bool(kw.get("exclude")))
    return ep, new or cookie


async def two_clusters(cl, mgr, policy: BackendPolicy | None = None) -> None:
    await web(cl["a"], ["10.1.0.1", "10.1.0.2", "10.1.0.3"])
    await web(cl["b"], ["10.2.0.1"])
    assert await mgr.start()
    mgr.sync({WEB: policy or BackendPolicy()})
    await eventually(lambda: len(mgr.describe(WEB)) == 4)


async def test_sticky_across_clusters_while_the_balancer_spreads():
    async with members("a", "b") as (cl, mgr):
        await two_clusters(cl, mgr)
        # Without a cookie, round robin over the union of clusters.
        assert Counter(mgr.pick(WEB, REQ).cluster for _ in range(40)) == {"a": 30, "b": 10}
        for affinity in (PERSISTENT, BALANCED):
            by_cluster: dict[str, str] = {}
            for _ in range(8):  # new clients until one lands in each cluster
                ep, cookie = session(mgr, affinity)
                by_cluster.setdefault(ep.cluster, cookie)
            assert set(by_cluster) == {"a", "b"}
            for cluster, cookie in by_cluster.items():
                got = {session(mgr, affinity, cookie)[0] for _ in range(20)}
                assert len(got) == 1 and got.pop().cluster == cluster
                # No Set-Cookie while the session holds.
                ep = mgr.pick(WEB, REQ, sticky=cookie)
                assert mgr.sticky_cookie(WEB, ep, affinity, current=cookie) is None


async def test_cookie_replaced_when_endpoint_gone_or_not_ready():
    async with members("a", "b") as (cl, mgr):
        await two_clusters(cl, mgr)
        ep, cookie = session(mgr)
        while ep.cluster != "b":
            ep, cookie = session(mgr)
        # b's pod is no longer ready: requests go to a, the client gets a new cookie.
        await web(cl["b"], [endpoint("10.2.0.1", ready=False)])
        await eventually(lambda: mgr.pick(WEB, REQ, sticky=cookie).cluster == "a")
        moved, new = session(mgr, cookie=cookie)
        assert moved.cluster == "a" and new != cookie
        assert decode_sticky(new).key == endpoint_key(moved)
        assert {session(mgr, cookie=new)[0] for _ in range(10)} == {moved}
        # The new endpoint removed from its slice: replaced again, within cluster a.
        rest = [ip for ip in ("10.1.0.1", "10.1.0.2", "10.1.0.3") if ip != moved.ip]
        await web(cl["a"], rest)
        await eventually(lambda: mgr.pick(WEB, REQ, sticky=new).ip != moved.ip)
        again, newer = session(mgr, cookie=new)
        assert again.ip in rest and newer != new


async def test_cookie_replaced_when_endpoint_ejected():
    policy = BackendPolicy(outlier=OutlierPolicy(consecutive_5xx=2, max_ejection_percent=50))
    async with members("a", "b") as (cl, mgr):
        await two_clusters(cl, mgr, policy)
        ep, cookie = session(mgr)
        for _ in range(2):
            mgr.report(ep, "http_5xx", 500)
        assert mgr.describe(WEB)[[d["ip"] for d in mgr.describe(WEB)].index(ep.ip)]["ejected"]
        picks = {session(mgr, cookie=cookie)[0] for _ in range(10)}
        assert ep not in picks
        moved, new = session(mgr, cookie=cookie)
        assert new != cookie and decode_sticky(new).key == endpoint_key(moved)


async def test_retry_excludes_the_cookie_endpoint_change_on_failure_moves_the_session():
    async with members("a", "b") as (cl, mgr):
        await two_clusters(cl, mgr)
        ep, cookie = session(mgr)
        tried = frozenset({ep.address})
        other = mgr.pick(WEB, REQ, sticky=cookie, exclude=tried, avoid_clusters=frozenset({ep.cluster}))
        assert other is not ep and other.cluster != ep.cluster  # retries prefer another cluster
        # Default: the retry is served elsewhere but the session keeps its endpoint.
        assert mgr.sticky_cookie(WEB, other, PERSISTENT, current=cookie, retried=True) is None
        assert mgr.pick(WEB, REQ, sticky=cookie) is ep
        # session-cookie-change-on-failure: the cookie follows the retry.
        cof = bind_affinity(SessionAffinity(persistent=True, change_on_failure=True), WEB, "/")
        new = mgr.sticky_cookie(WEB, other, cof, current=cookie, retried=True)
        assert mgr.pick(WEB, REQ, sticky=new) is other


async def test_balanced_scale_up_moves_some_sessions_to_the_new_pods_persistent_none():
    async with members("a") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1", "10.1.0.2"])
        assert await mgr.start()
        mgr.sync({WEB: BackendPolicy()})
        await eventually(lambda: len(mgr.describe(WEB)) == 2)
        sessions = {aff: [session(mgr, aff) for _ in range(200)] for aff in (PERSISTENT, BALANCED)}
        await web(cl["a"], ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"])
        await eventually(lambda: len(mgr.describe(WEB)) == 4)
        for aff, moved_low, moved_high in ((PERSISTENT, 0, 0), (BALANCED, 60, 140)):
            moved = 0
            for ep, cookie in sessions[aff]:
                now = mgr.pick(WEB, REQ, sticky=cookie)
                if now is not ep:
                    assert now.ip in ("10.1.0.3", "10.1.0.4")
                    moved += 1
                    # The response re-pins the client to its new pod.
                    new = mgr.sticky_cookie(WEB, now, aff, current=cookie)
                    assert new is not None and mgr.pick(WEB, REQ, sticky=new) is now
            assert moved_low <= moved <= moved_high


class HealthServer:
    """A pod answering /healthz with a status we choose (real sockets on 127.0.0.1)."""

    def __init__(self) -> None:
        self.status = 200
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_cookie_replaced_when_active_health_checks_fail_its_endpoint():
    pods = {"a": HealthServer(), "b": HealthServer()}
    ports = {name: await pod.start() for name, pod in pods.items()}
    hc = HealthCheckPolicy(path="/healthz", interval=0.05, timeout=0.5,
                           healthy_threshold=1, unhealthy_threshold=1)
    try:
        async with members("a", "b") as (cl, mgr):
            for name in ("a", "b"):
                await web(cl[name], ["127.0.0.1"], port=ports[name])
            assert await mgr.start()
            mgr.sync({WEB: BackendPolicy(health_check=hc)})
            await eventually(lambda: [d["healthy"] for d in mgr.describe(WEB)] == [True, True])
            ep, cookie = session(mgr)
            assert {session(mgr, cookie=cookie)[0] for _ in range(6)} == {ep}
            pods[ep.cluster].status = 503
            await eventually(lambda: mgr.pick(WEB, REQ, sticky=cookie) is not ep)
            moved, new = session(mgr, cookie=cookie)
            assert moved.cluster != ep.cluster and new != cookie
            # Healthy again: the moved session stays where it is now (no flapping back).
            pods[ep.cluster].status = 200
            await eventually(lambda: all(d["healthy"] for d in mgr.describe(WEB)))
            assert {session(mgr, cookie=new)[0] for _ in range(6)} == {moved}
    finally:
        for pod in pods.values():
            await pod.stop()
