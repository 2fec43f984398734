"""The HTTP/1.1 listener: accepts client connections, owns the upstream pool and mirrors.

`router` is a plain attribute: assigning a new Router applies to every request whose head
completes afterwards; requests in flight keep the decision they got and no connection is
touched (issue item 15). The cluster manager is consulted per attempt, so endpoint changes
apply to the next pick.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from gateway.credentials import CredentialStore
from gateway.proxy.client import IDLE, ClientConnection
from gateway.proxy.config import Limits
from gateway.proxy.extauth import AuthChecker
from gateway.proxy.hooks import Hooks, ProxyHooks, RequestLog
from gateway.proxy.listener import Acceptor, Source, handoff
from gateway.proxy.mirror import MirrorSender
from gateway.proxy.passthrough import Passthrough
from gateway.proxy.pool import ConnectionPool
from gateway.types import BackendRef, ClusterManager, Endpoint, RequestView, Router, UpstreamTLS
from gateway.upstream_tls import UpstreamTLSStore

log = logging.getLogger("gateway.proxy")


class ProxyServer:
    """`await start(host, port)` -> bound port; `await stop(grace)` drains, then closes.

    With `ssl` (a server context, e.g. gateway/tls.py's with its SNI callback), the listener
    terminates TLS (a handshake gets `Limits.header_timeout`); the data path sees the same
    byte stream, and `scheme` ("https") is what X-Forwarded-Proto says."""

    def __init__(
        self,
        router: Router,
        clusters: ClusterManager,
        *,
        metrics: Hooks | None = None,
        limits: Limits | None = None,
        xff_trusted: Iterable[str] = (),
        scheme: str = "http",
        access_log: RequestLog | None = None,
        proxy_protocol: bool = False,
    ) -> None:
        self.router = router
        self.access_log = access_log
        self.clusters = clusters
        self.hooks: Hooks = metrics if metrics is not None else ProxyHooks()
        self.limits = limits if limits is not None else Limits()
        #: Peers whose X-Forwarded-Proto/Host/Port and X-Real-IP we keep (other proxies, LBs).
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in xff_trusted]
        self._trust_cache: dict[str, bool] = {}
        self.scheme = scheme
        self.conns: set[ClientConnection] = set()
        #: Draining: each response announces `Connection: close` and the connection closes
        #: after it (new connections are still taken); stopping: new ones are refused too.
        self.draining = False
        self.stopping = False
        self.port = 0
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.pool: ConnectionPool = None  # type: ignore[assignment]
        self.mirror: MirrorSender = None  # type: ignore[assignment]
        self._server: asyncio.Server | None = None
        #: Connections start with a PROXY protocol header (gateway/proxy/listener.py).
        self.proxy_protocol = proxy_protocol
        #: The listener when connections are looked at first (PROXY protocol header,
        #: ssl-passthrough); then there is no `_server`.
        self.acceptor: Acceptor | None = None
        #: The HTTPS listener's ssl-passthrough routing (with `acceptor`).
        self.passthrough: Passthrough | None = None
        self._drained: asyncio.Event | None = None
        #: HTTPS listener: the Strict-Transport-Security line added to proxied responses for
        #: hosts `hsts_for` accepts (those with a certificate configured; set by the app).
        self.hsts = b""
        self.hsts_for: Callable[[str], bool] | None = None
        self.busy_poll = self.limits.busy_poll
        self.reads = 0  # bumped by every read while busy polling
        self._reads_seen = 0
        self._poll_until = 0.0
        self._polling = False
        self.auth = AuthChecker()  # auth-url checks (gateway/proxy/extauth.py)
        #: auth-type basic checks; the app gives it the hub's Secrets (none: such routes 503).
        self.credentials = CredentialStore()
        #: proxy-ssl-* client contexts; the app gives it the hub's Secrets (none: such routes 503).
        self.upstream_tls = UpstreamTLSStore()
        #: Client connections with writes held until the end of this loop turn (flush_later).
        self.dirty: list[ClientConnection] = []

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    ssl: ssl.SSLContext | None = None,
                    passthrough: Callable[[str], BackendRef | None] | None = None) -> int:
        """`passthrough` (with `ssl`): the ssl-passthrough backend of a TLS server name, or
        None to terminate TLS here (gateway/proxy/passthrough.py)."""
        self.loop = asyncio.get_running_loop()
        lim = self.limits
        self.pool = ConnectionPool(self.loop, lim.max_idle_per_endpoint, lim.upstream_idle_timeout)
        self.pool.tls_for = self._tls_for
        self.mirror = MirrorSender(self)
        if self.proxy_protocol or (passthrough is not None and ssl is not None):
            terminate = handoff(self.loop, self._connection, ssl, lim.header_timeout)
            if passthrough is not None and ssl is not None:
                self.passthrough = Passthrough(passthrough, self._passthrough_pick,
                                               self.clusters.report, terminate, lim)
            self.acceptor = Acceptor(terminate, proxy_protocol=self.proxy_protocol,
                                     header_timeout=lim.header_timeout, passthrough=self.passthrough)
            self.port = self.acceptor.listen(host, port)
        else:
            self._server = await self.loop.create_server(
                lambda: ClientConnection(self), host, port, reuse_address=True, backlog=1024,
                ssl=ssl, ssl_handshake_timeout=lim.header_timeout if ssl is not None else None)
            # uvloop gives a list where typeshed says tuple (compiled code checks declared types)
            sockets = cast(Any, self._server).sockets
            self.port = sockets[0].getsockname()[1]
        self.pool.start()
        log.info("proxy listening on %s %s:%d", self.scheme, host, self.port)
        return self.port

    def drain(self) -> None:
        """Keep serving, but move clients off: idle connections close now, busy ones after
        their response (announced with `Connection: close`), new ones after their first."""
        self.draining = True
        for c in list(self.conns):
            if c.exchange is None and c.tunnel is None and not c.pipeline and c.state == IDLE:
                c.close()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; idle connections close now, busy ones after their response
        (announced with `Connection: close`); whatever is left after `grace` is cut."""
        if self._server is None and self.acceptor is None:
            return
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self.acceptor is not None:
            self.acceptor.close()
        self.drain()
        if self.conns:
            self._drained = asyncio.Event()
            try:
                async with asyncio.timeout(grace):
                    await self._drained.wait()
            except TimeoutError:
                pass
        for c in list(self.conns):
            c.abort()
        await self.mirror.stop()
        await self.auth.close()
        self.pool.close()
        await asyncio.sleep(0)
        self._server = None
        self.acceptor = None
        self.passthrough = None

    def _connection(self, source: Source | None) -> ClientConnection:
        return ClientConnection(self, source)

    def _tls_for(self, profile: UpstreamTLS) -> tuple[ssl.SSLContext, str]:
        return self.upstream_tls.context(profile)

    def _passthrough_pick(self, ref: BackendRef, view: RequestView,
                          exclude: frozenset[tuple[str, int]]) -> Endpoint | None:
        """An endpoint of `ref` for an ssl-passthrough connection (None: none usable)."""
        return self.clusters.pick(ref, view, exclude=exclude)

    def hsts_line(self, view: RequestView | None) -> bytes:
        """The Strict-Transport-Security line for an answer to this request: on the HTTPS
        listener, for a host with a certificate (ingress-nginx's hsts); b"" otherwise."""
        if self.hsts and self.hsts_for is not None and view is not None and self.hsts_for(view.host):
            return self.hsts
        return b""

    def flush_later(self, client: ClientConnection) -> None:
        """Hold `client`'s writes (its `wbuf`) until the events of this loop turn are handled."""
        if not self.dirty:
            self.loop.call_soon(self._flush_dirty)
        self.dirty.append(client)

    def _flush_dirty(self) -> None:
        dirty = self.dirty
        self.dirty = []
        for c in dirty:
            if not c.closing:
                c.flush()
            c.wbuf = None

    def read_happened(self) -> None:
        """A client or upstream read (only called with busy polling on): poll from now on."""
        self.reads += 1
        if not self._polling:
            self._polling = True
            self._poll_until = time.monotonic() + self.busy_poll
            self.loop.call_soon(self._poll)

    def _poll(self) -> None:
        """A ready callback makes the loop poll without blocking; re-queued until `busy_poll`
        passed with no read (monotonic, not loop.time(): uvloop's has 1 ms steps)."""
        now = time.monotonic()
        if self.reads != self._reads_seen:
            self._reads_seen = self.reads
            self._poll_until = now + self.busy_poll
        if now < self._poll_until and not self.stopping:
            self.loop.call_soon(self._poll)
        else:
            self._polling = False

    def connection_closed(self, conn: ClientConnection) -> None:
        self.conns.discard(conn)
        self.hooks.connection_closed()
        if self._drained is not None and not self.conns:
            self._drained.set()

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        hit = self._trust_cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
                hit = any(addr in net for net in self.trusted)
            except ValueError:
                hit = False
            if len(self._trust_cache) < 4096:
                self._trust_cache[ip] = hit
        return hit
