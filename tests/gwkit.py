"""Test helpers for the gateway data path: a Router and a ClusterManager over fixed endpoints
(real implementations of the gateway.types protocols), tiny HTTP/1.1 upstream servers with
scriptable misbehaviour, and a raw HTTP client for what real clients refuse to send."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from netkit import refusing_port
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from gateway.metrics import BOUNDS, GatewayMetrics
from gateway.proxy import Limits, ProxyHooks, ProxyServer
from gateway.types import (
    BackendRef,
    ClusterManager,
    Endpoint,
    Outcome,
    RequestView,
    RouteDecision,
    Router,
    SessionAffinity,
)
from gateway.upstream.affinity import sticky_cookie, sticky_endpoint

# -- Router + ClusterManager ------------------------------------------------------------------


class FixedRouter(Router):
    """Longest path-prefix match per host ("*" matches any host)."""

    def __init__(self, rules: Sequence[tuple[str, str, RouteDecision]]) -> None:
        self.rules = sorted(rules, key=lambda r: -len(r[1]))
        self.seen: list[RequestView] = []

    def route(self, request: RequestView) -> RouteDecision | None:
        self.seen.append(request)
        for host, prefix, decision in self.rules:
            if host in ("*", request.host) and request.path.startswith(prefix):
                return decision
        return None


class FixedClusters(ClusterManager):
    """Round robin over fixed endpoints, honouring `exclude`, `avoid_clusters` and a sticky
    cookie (persistent semantics)."""

    def __init__(self, backends: dict[BackendRef, list[Endpoint]]) -> None:
        self.backends = backends
        self.reports: list[tuple[Endpoint, Outcome, int | None]] = []
        self.n = -1  # round robin over whatever is eligible

    def pick(self, backend: BackendRef, request: RequestView, *,
             exclude: frozenset[tuple[str, int]] = frozenset(),
             avoid_clusters: frozenset[str] = frozenset(),
             sticky: str | None = None) -> Endpoint | None:
        eps = self.backends.get(backend)
        if not eps:
            return None
        if sticky is not None:
            hit = sticky_endpoint(eps, sticky, exclude=exclude)
            if hit is not None:
                return hit
        self.n += 1
        if not exclude and not avoid_clusters and len(eps) == 1 and eps[0].ready:
            return eps[0]  # the common case, kept cheap for benchmarks
        eps = [e for e in eps if e.ready and e.address not in exclude]
        eps = [e for e in eps if e.cluster not in avoid_clusters] or eps
        return eps[self.n % len(eps)] if eps else None

    def sticky_cookie(self, backend: BackendRef, endpoint: Endpoint, affinity: SessionAffinity,
                      *, current: str | None = None, retried: bool = False) -> str | None:
        return sticky_cookie(None, endpoint, affinity, current=current, retried=retried)

    def report(self, endpoint: Endpoint, outcome: Outcome, status: int | None = None) -> None:
        self.reports.append((endpoint, outcome, status))

    def outcomes(self) -> list[str]:
        return [o for _, o, _ in self.reports]


REF = BackendRef("default", "web", 80)


def decision(backend: BackendRef = REF, **kw: object) -> RouteDecision:
    return RouteDecision(backend=backend, route_name=kw.pop("route_name", "default/web|/"), **kw)  # type: ignore[arg-type]


# -- upstream servers -------------------------------------------------------------------------


@dataclass
class Req:
    method: str
    path: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(vals) if vals else None


@dataclass
class Upstream:
    """A tiny HTTP/1.1 server (asyncio streams) whose behaviour is chosen by the request path:

    /status/<code>, /sleep/<s>, /reset, /close, /garbage, /chunked/<n>, /eof[/<n>], /bytes/<n>,
    /trailers, /moved (302 with Location, Refresh, Set-Cookie), /ws (101, then echo raw bytes),
    anything else: a JSON echo of the request.
    `default_status` overrides every answer (a "broken pod").
    """

    name: str
    host: str = "127.0.0.1"
    port: int = 0
    default_status: int | None = None
    requests: list[Req] = field(default_factory=list)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    server: asyncio.Server | None = None
    hook: Callable[[Req], None] | None = None
    delay: float = 0.0  # before every answer
    keepalive: bool = True  # False: JSON echoes say `Connection: close` and the connection closes
    #: Requests a connection serves, the last one's JSON echo saying `Connection: close` (nginx's
    #: keepalive_requests); 0: no limit.
    max_requests: int = 0
    conns_total: int = 0
    sent_bytes: int = 0  # body bytes written by /bytes
    tasks: set[asyncio.Task] = field(default_factory=set)

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def endpoint(self, cluster: str) -> Endpoint:
        return Endpoint(cluster=cluster, ip=self.host, port=self.port)

    async def stop(self) -> None:
        await self.kill()
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)

    async def kill(self) -> None:
        """Stop listening and cut every open connection (a pod that died)."""
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.conns_total += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        served = 0
        try:
            while True:
                req = await read_request(reader)
                if req is None:
                    break
                self.requests.append(req)
                if self.hook is not None:
                    self.hook(req)
                served += 1
                if not await self._answer(req, reader, writer, last=served == self.max_requests):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # stop(): end quietly (streams would log a cancelled handler)
            pass
        finally:
            self.tasks.discard(task)
            self.writers.discard(writer)
            writer.close()

    async def _answer(self, req: Req, reader: asyncio.StreamReader, w: asyncio.StreamWriter,
                      last: bool = False) -> bool:
        p = req.path.split("?")[0]
        parts = p.strip("/").split("/")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.default_status is not None:
            w.write(response(self.default_status, f"{self.name} broken\n".encode()))
        elif parts[0] == "status":
            w.write(response(int(parts[1]), f"{self.name} {parts[1]}\n".encode()))
        elif parts[0] == "sleep":
            await asyncio.sleep(float(parts[1]))
            w.write(response(200, f"{self.name} slept\n".encode()))
        elif parts[0] == "reset":
            w.transport.abort()
            return False
        elif parts[0] == "close":
            return False
        elif parts[0] == "garbage":
            w.write(b"NOT HTTP AT ALL\r\n\r\n")
            return False
        elif parts[0] == "chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
            for i in range(int(parts[1])):
                piece = f"chunk{i};".encode()
                w.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await w.drain()
            w.write(b"0\r\n\r\n")
        elif parts[0] == "trailers":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                    b"5\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n")
        elif parts[0] == "hop":
            w.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
                    b"Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTrailer: X-T\r\n"
                    b"Upgrade: h2c\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok")
        elif parts[0] == "acao":  # its own CORS header (enable-cors replaces it)
            w.write(b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: https://upstream.example\r\n"
                    b"Content-Length: 2\r\n\r\nok")
        elif parts[0] == "moved":  # a redirect with cookies (proxy-redirect-*, proxy-cookie-*)
            w.write(b"HTTP/1.1 302 Found\r\nLocation: http://internal.svc:8080/app/next\r\n"
                    b"Refresh: 5; url=http://internal.svc:8080/app/later\r\n"
                    b"Set-Cookie: sid=1; Domain=.Internal.SVC; Path=/app/; HttpOnly\r\n"
                    b"Set-Cookie: theme=dark; path=/other\r\nContent-Length: 0\r\n\r\n")
        elif parts[0] == "sts":  # its own Strict-Transport-Security (the gateway's replaces it)
            w.write(b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=60\r\n"
                    b"Content-Length: 2\r\n\r\nok")
        elif parts[0] == "partial":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
            await w.drain()
            await asyncio.sleep(0.05)
            w.transport.abort()
            return False
        elif parts[0] == "eof":  # /eof/<n>: n bytes of "y" before the close
            body = b"y" * int(parts[1]) if len(parts) > 1 else b"until the end"
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body)
            await w.drain()
            return False
        elif parts[0] == "bytes":
            n = int(parts[1])
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            block = b"x" * 65536
            while n > 0:
                w.write(block[:n])
                self.sent_bytes += min(n, 65536)
                n -= min(n, 65536)
                await w.drain()
        elif parts[0] == "ws":
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + (req.header("upgrade") or "").encode()
                    + b"\r\nConnection: Upgrade\r\n\r\nwelcome;")
            while data := await reader.read(65536):
                w.write(data)
                await w.drain()
            return False
        else:
            body = json.dumps({
                "server": self.name, "method": req.method, "path": req.path, "version": req.version,
                "headers": req.headers, "body_len": len(req.body),
                "body_sha": hashlib.sha256(req.body).hexdigest(),
            }).encode()
            head = response(200, body, ctype="application/json")
            keep = self.keepalive and not last
            if not keep:
                head = head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
            w.write(head)
            await w.drain()
            return keep and (req.header("connection") or "").lower() != "close"
        await w.drain()
        return (req.header("connection") or "").lower() != "close"


def response(status: int, body: bytes, ctype: str = "text/plain") -> bytes:
    if status in (204, 304):
        return b"HTTP/1.1 %d X\r\n\r\n" % status
    return (b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, ctype.encode(), len(body))) + body


async def read_request(reader: asyncio.StreamReader) -> Req | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, path, version = lines[0].split(" ", 2)
    headers = [tuple(x.strip() for x in ln.split(":", 1)) for ln in lines[1:]]
    req = Req(method, path, version, headers)  # type: ignore[arg-type]
    if (req.header("transfer-encoding") or "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size + 2)
            del body[-2:]
        req.body = bytes(body)
    elif req.header("content-length"):
        req.body = await reader.readexactly(int(req.header("content-length") or 0))
    return req


class Env:
    """Upstreams + FixedRouter/FixedClusters + a ProxyServer; `close()` tears all down."""

    def __init__(self) -> None:
        self.upstreams: list[Upstream] = []
        self.backends: dict[BackendRef, list[Endpoint]] = {}
        self.clusters = FixedClusters(self.backends)
        self.router = FixedRouter([("*", "/", decision())])
        self.proxy: ProxyServer | None = None
        self.port = 0
        self.hooks = RecordingHooks()

    async def upstream(self, name: str, cluster: str = "c1", host: str = "127.0.0.1",
                       ref: BackendRef = REF) -> Upstream:
        up = await Upstream(name, host=host).start()
        self.upstreams.append(up)
        self.backends.setdefault(ref, []).append(up.endpoint(cluster))
        return up

    async def start(self, *rules: tuple[str, str, RouteDecision], limits: Limits | None = None,
                    **kw: object) -> int:
        if rules:
            self.router = FixedRouter(rules)
        self.proxy = ProxyServer(self.router, self.clusters, metrics=self.hooks, limits=limits, **kw)  # type: ignore[arg-type]
        self.port = await self.proxy.start("127.0.0.1", 0)
        return self.port

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop(0.5)
        for up in self.upstreams:
            await up.stop()


class RecordingHooks(ProxyHooks):
    """Metrics hooks that remember every call (the app's Prometheus subclass is the real one)."""

    def __init__(self) -> None:
        self.observed: list[tuple[str, str, int]] = []
        self.retries = 0
        self.errors: list[str] = []
        self.mirrors: list[str] = []
        self.opened = self.closed = 0

    def observe(self, route: str, cluster: str, status: int, upstream_seconds: float) -> None:
        self.observed.append((route, cluster, status))

    def retry(self, route: str) -> None:
        self.retries += 1

    def upstream_error(self, route: str, cluster: str, cause: str) -> None:
        self.errors.append(cause)

    def mirror(self, outcome: str, copies: int = 1) -> None:  # type: ignore[override]
        self.mirrors += [outcome] * copies

    def connection_opened(self) -> None:
        self.opened += 1

    def connection_closed(self) -> None:
        self.closed += 1


# -- a raw client ------------------------------------------------------------------------------


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(vals) if vals else None

    def json(self) -> dict:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> Resp:
    """One response from a raw stream (Content-Length, chunked, or until EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [tuple(x.strip() for x in ln.split(":", 1)) for ln in lines[1:]]
    r = Resp(status, headers, b"")  # type: ignore[arg-type]
    if head_only or status in (100, 101, 204, 304):
        return r
    if (r.header("transfer-encoding") or "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += (await reader.readexactly(size + 2))[:-2]
        r.body = bytes(body)
    elif r.header("content-length") is not None:
        r.body = await reader.readexactly(int(r.header("content-length") or 0))
    else:
        r.body = await reader.read()
    return r


@contextlib.asynccontextmanager
async def raw(port: int, host: str = "127.0.0.1"):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def closed(reader: asyncio.StreamReader, within: float = 2.0) -> bool:
    """True when the peer closed (EOF or reset) within the time."""
    try:
        async with asyncio.timeout(within):
            return await reader.read() == b""
    except ConnectionError:
        return True


def dead_endpoint(cluster: str = "c1", host: str = "127.0.0.1") -> Endpoint:
    """An address nobody listens on (connect refused)."""
    return Endpoint(cluster=cluster, ip=host, port=refusing_port(host))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def eventually(check: Callable[[], object], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class LibraryFamilies:
    """A GatewayMetrics' per-route counts as prometheus_client's own families: what
    `GatewayMetrics.render` must equal (tests), and the naive way to scrape them (bench)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list:  # (else registering it would collect once, at once)
        return []

    def collect(self):
        requests = CounterMetricFamily("gateway_requests", "Client requests by route, serving cluster and final status",
                                       labels=["route", "cluster", "status"])
        latency = HistogramMetricFamily("gateway_upstream_latency_seconds",
                                        "First upstream attempt to the end of the response",
                                        labels=["route", "cluster"])
        for route, clusters in list(self.metrics.routes.items()):
            for cluster, stats in list(clusters.items()):
                for status, n in list(stats.statuses.items()):
                    requests.add_metric([route, cluster, str(status)], n)
                counts = list(stats.buckets)
                if sum(counts):  # (no upstream answered, cluster "": no histogram)
                    cumulative, buckets = 0, []
                    for bound, count in zip(BOUNDS, counts, strict=True):
                        cumulative += count
                        buckets.append((bound, cumulative))
                    latency.add_metric([route, cluster], buckets, stats.total)
        yield requests
        yield latency
