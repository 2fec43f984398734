"""One client request through the proxy: route, pick, attempt, retry, stream both ways.

Everything here runs from protocol callbacks; the only coroutine is a connect when the pool
has no idle connection for the picked address. Timeouts are a deadline on the exchange that
the client connection's single lazy timer checks (no timer handle per request).

Retry buffer: request body bytes are kept (by reference) up to `Limits.retry_buffer`; a
retry resends them. Once a longer body has started flowing upstream it cannot be replayed,
so that request is not retried after its first byte left (the failure is answered instead).
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from typing import TYPE_CHECKING, Any, Final

from gateway.client_auth import peer_certificate
from gateway.proxy.affinity import request_cookie, set_cookie_header
from gateway.proxy.extauth import Verdict
from gateway.proxy.heads import (
    LazyHeaders,
    Reject,
    chunk,
    last_chunk,
    lines_at,
    upstream_head,
    with_set_headers,
)
from gateway.proxy.response import ResponseSide
from gateway.proxy.states import (
    CONNECTING,
    PAUSE_PENDING,
    SENT,
)
from gateway.routing.clientcert import CLIENT_CERT_HEADERS
from gateway.types import Endpoint, RequestView, RouteDecision

if TYPE_CHECKING:
    from gateway.proxy.pool import UpstreamConnection

log = logging.getLogger("gateway.proxy")

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_AUTHORIZATION: Final = frozenset({"authorization"})
_DENIED: Final = "denied: this route's authentication settings cannot be applied"
_TLS_DENIED: Final = "denied: this route's proxy-ssl settings cannot be applied"
#: The body of a basic/digest refusal, by status (else: the check itself failed, a 500).
_AUTH_TEXT: Final = {401: "authorization required", 503: _DENIED, 400: "bad authorization header"}
_METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class Exchange(ResponseSide):
    """One request/response: routing, endpoint picks, attempts, the request body."""

    # -- start ----------------------------------------------------------------------------

    def start(self) -> None:
        h = self.head
        srv = self.server
        view = self.view = RequestView(
            _METHODS.get(h.method) or h.method.decode("latin-1"), h.path.decode("latin-1"),
            h.host, LazyHeaders(h.lower), h.client_ip, srv.scheme, self.client.peer.trusted)
        try:
            d = srv.router.route(view)
        except Exception:
            log.exception("router failed on %s %s", view.method, view.path)
            self.respond(500, "routing error")
            return
        if d is None:
            self.respond(404, "no route for this host and path")
            return
        self.decision = d
        self.route = d.route_name
        cert_headers: tuple[tuple[str, str], ...] | None = None
        if d.client_cert is not None:  # auth-tls-*: nginx checks as it reads the request head
            admission = d.client_cert.admit(self._tls_peer())
            if admission.status:
                self.respond(admission.status, admission.text, admission.location)
                return
            cert_headers = admission.headers
        if d.redirect is not None:  # app-root, permanent-/temporal-redirect: answered here
            self.respond(d.redirect.status, f"redirecting to {d.redirect.location}", d.redirect.location)
            return
        limit = d.rate_limit
        if limit is not None:  # limit-rps/-rpm/-connections: nginx's preaccess phase, before allow
            status, key = limit.admit(view, self.client.loop.time())
            if status:
                self.respond(status, "too many requests from this client address")
                return
            if key:
                self.held_limit, self.held_key = limit, key  # released when the exchange ends
        if d.deny:  # allowlist-source-range
            self.respond(d.deny, "forbidden: the client address is not allowed for this route")
            return
        if d.max_body >= 0:
            self.body_limit = d.max_body
        if self.over_limit(h.length if h.length is not None else self.received):
            self.respond(413, "request body too large")  # before its body is read: then closed
            return
        if d.cors is not None:  # enable-cors (gateway/routing/cors.py)
            preflight = h.method == b"OPTIONS"
            lines: bytes = d.cors.headers(view.headers.get("origin"), preflight)
            if lines and preflight:
                self.respond(204, "", extra=lines)
                return
            self.resp_cors = lines
        parts = h.parts
        if cert_headers is not None:  # a client's own ssl-client-* never pass
            parts = with_set_headers(parts, cert_headers, drop=CLIENT_CERT_HEADERS)
        basic = d.basic_auth
        slow = None
        if basic is not None:  # auth-type basic: nginx's auth_basic, before auth_request
            authorization = view.headers.get("authorization")
            status = 503 if basic.broken else srv.credentials.check(basic, authorization, h.method, h.path)
            if not isinstance(status, int):
                slow, status = status, 0
            if status:
                self.respond(status, _AUTH_TEXT.get(status, "authorization check failed"),
                             extra=srv.credentials.challenge(basic, authorization) if status == 401 else b"")
                return
            parts = with_set_headers(parts, (), drop=_AUTHORIZATION)  # not passed upstream
        if d.auth is not None and d.auth.broken:
            self.respond(503, _DENIED)
            return
        if d.tls_profile is not None and srv.upstream_tls.problem(d.tls_profile) is not None:
            self.respond(503, _TLS_DENIED)  # (proxy-ssl-secret: nginx would not load it)
            return
        if slow is not None or d.auth is not None:
            self.connect_task = self.client.loop.create_task(self._authorize(d, parts, slow))
            return
        self._forward(d, parts)

    def _tls_peer(self) -> Any:
        """The connection's client certificate (None on plain HTTP), read once."""
        client = self.client
        if self.server.scheme != "https":
            return None
        if client.tls_peer is None:
            client.tls_peer = peer_certificate(client.transport.get_extra_info("ssl_object"))
        return client.tls_peer

    async def _authorize(self, d: RouteDecision, parts: list[bytes], slow: Any) -> None:
        """A slow basic-auth hash (gateway/credentials.py), then the auth service (auth-url,
        gateway/proxy/extauth.py); the request's body waits in `pending` meanwhile, as it
        does while a connection is being made."""
        srv = self.server
        if slow is not None:
            status = await srv.credentials.verify_slow(slow)
            if self.done:
                return
            if status:
                self.connect_task = None
                self.respond(401, "authorization required",
                             extra=srv.credentials.challenge(d.basic_auth, None))
                return
            if d.auth is None:
                self.connect_task = None
                self._forward(d, parts)
                return
        try:
            view = self.view
            assert view is not None
            verdict = await srv.auth.check(d.auth, self.head, view, d.timeouts)
        except Exception:
            log.exception("external auth check failed on %s", self.view)
            verdict = Verdict(500, "auth check failed")
        self.connect_task = None
        if self.done:
            return
        self.resp_auth, self.auth_always = verdict.cookies, d.auth.always_set_cookie
        if verdict.status:
            self.respond(verdict.status, verdict.text, verdict.location, verdict.to_client)
            return
        if verdict.to_upstream:
            parts = with_set_headers(parts, tuple((n, v) for n, v in verdict.to_upstream if v is not None),
                                     drop=frozenset(n for n, _ in verdict.to_upstream))
        self._forward(d, parts)

    def _forward(self, d: RouteDecision, parts: list[bytes]) -> None:
        """To the upstream: its request head, the mirrors, the first attempt."""
        h = self.head
        srv = self.server
        view = self.view
        assert view is not None
        if d.set_headers:
            parts = with_set_headers(parts, d.set_headers)
        host = d.upstream_host.encode("latin-1") if d.upstream_host else h.host_raw
        # rewrite-target: the request-target sent upstream (mirrors keep the original)
        path = d.path.encode("latin-1", "replace") if d.path is not None else None
        self.up_head = upstream_head(h, parts, host, path)
        if d.mirrors and h.upgrade is None:
            self.mirrors = srv.mirror.plan(h, view, d.mirrors, parts, self.up_head, lines_at(h, host, path))
            if self.mirrors and self.req_done:
                srv.mirror.launch(self.mirrors)
        self.t0 = now = self.client.loop.time()
        if d.timeouts.total:
            self.total_deadline = now + d.timeouts.total
        self._attempt(now)

    def _pick(self) -> Endpoint | None:
        d = self.decision
        assert d is not None and self.view is not None
        if d.affinity is not None:
            return self._pick_sticky(d, self.view)
        clusters = self.server.clusters  # (a native call: no bound method)
        if self.tried:
            exclude, avoid = self._retry_filters(d)
            ep = clusters.pick(d.backend, self.view, exclude=exclude, avoid_clusters=avoid)
            for fb in d.fallbacks:
                if ep is not None:
                    break
                ep = clusters.pick(fb, self.view, exclude=exclude, avoid_clusters=avoid)
            return ep
        ep = clusters.pick(d.backend, self.view)
        for fb in d.fallbacks:
            if ep is not None:
                break
            ep = clusters.pick(fb, self.view)
        return ep

    def _retry_filters(self, d: RouteDecision) -> tuple[frozenset[tuple[str, int]], frozenset[str]]:
        """A retry's picks: not an address tried, and (when preferred) not their clusters."""
        exclude = frozenset(e.address for e in self.tried)
        avoid = frozenset(e.cluster for e in self.tried) if d.retry.prefer_other_cluster else frozenset()
        return exclude, avoid

    def _pick_sticky(self, d: RouteDecision, view: RequestView) -> Endpoint | None:
        """`_pick` with cookie affinity: the cookie's endpoint first (gateway/upstream/
        affinity.py), and the Set-Cookie line for the endpoint picked (re-pinned only when
        it changes the session), against the backend actually used (a fallback included)."""
        aff = d.affinity
        assert aff is not None
        clusters = self.server.clusters
        if not self.tried:
            self.sticky = request_cookie(aff, view.headers)
            exclude: frozenset[tuple[str, int]] = frozenset()
            avoid: frozenset[str] = frozenset()
        else:
            exclude, avoid = self._retry_filters(d)
        sticky = self.sticky
        for ref in (d.backend, *d.fallbacks):
            ep = clusters.pick(ref, view, exclude=exclude, avoid_clusters=avoid, sticky=sticky)
            if ep is not None:
                value = clusters.sticky_cookie(ref, ep, aff, current=sticky, retried=bool(self.tried))
                self.resp_extra = b"" if value is None else set_cookie_header(
                    aff, ep, aff.path or "/", value=value, https=self.server.scheme == "https")
                return ep
        return None

    def _attempt(self, now: float = 0.0) -> None:
        self.backoff = None
        if self.done:
            return
        ep = self._pick()
        if ep is None:
            self.respond(*(self.last_error or (503, "no healthy upstream")))
            return
        self.attempts += 1
        self.ep = ep
        self.cluster = ep.cluster
        ep.active_requests += 1
        # load-balance ewma times this attempt (0: not timed, also when a balancer turned
        # ewma on while it was under way)
        self.attempt_t0 = time.monotonic() if ep.ewma_on else 0.0
        if self.tried:
            self.tried.append(ep)  # type: ignore[union-attr]
        else:
            self.tried = [ep]
        if self.head.expect and not self.sent_continue and not self.req_done and not self.pending:
            self.sent_continue = True
            self.client.write(_CONTINUE)
        d = self.decision
        assert d is not None
        if d.upstream_tls:  # backend-protocol HTTPS
            key = ep.tls_key if d.tls_profile is None else (ep.ip, ep.port, d.tls_profile)
        else:
            key = ep.key
        conn = self.server.pool.acquire(key)
        if conn is not None:
            self._send(conn, now)
            return
        self.phase = CONNECTING
        self._set_deadline(self.client.loop.time() + d.timeouts.connect)
        self.connect_task = self.client.loop.create_task(self._connect(key, self.attempts))

    async def _connect(self, addr: Any, n: int) -> None:
        try:
            conn = await self.server.pool.connect(addr)
        except ssl.SSLCertVerificationError as exc:  # (proxy-ssl-verify)
            if not self.done and self.attempts == n and self.phase == CONNECTING:
                self.connect_task = None
                self._failed("certificate", exc.verify_message or "verification failed")
            return
        except OSError as exc:
            if not self.done and self.attempts == n and self.phase == CONNECTING:
                self.connect_task = None
                self._failed("connect_failure", os.strerror(exc.errno).lower() if exc.errno else type(exc).__name__)
            return
        if self.done or self.attempts != n or self.phase != CONNECTING:
            self.server.pool.release(conn)
            return
        self.connect_task = None
        self._send(conn)

    def _send(self, conn: UpstreamConnection, now: float = 0.0) -> None:
        self.conn = conn
        conn.owner = self
        self.phase = SENT
        self.stale_ok = conn.reused
        h = self.head
        out = [self.up_head]
        if self.pending:
            out += [chunk(c) for c in self.pending] if h.chunked else self.pending
            self.body_sent += self.pending_size
            self.pending = ()
            self.pending_size = 0
            self.client.resume_reading(PAUSE_PENDING)
        if self.req_done:
            if h.chunked:
                out.append(last_chunk(self.req_trailers))
            self.req_sent = True
        if self.client.write_paused:
            conn.pause_reading()
        for piece in out:
            conn.write(piece)
        self.wire = h.upgrade is None
        d = self.decision
        timeout = (d.retry.per_try_timeout or d.timeouts.read) if self.req_sent else d.timeouts.send  # type: ignore[union-attr]
        when = (now or self.client.loop.time()) + timeout
        self.deadline = when if when < self.total_deadline else self.total_deadline
        t = self.client.timer
        if t is None or self.deadline < t.when():
            self.client.arm(self.deadline)

    # -- request body (from the client parser) ----------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        if self.done or not data:
            return
        n = len(data)
        self.received += n
        if self.head.chunked and self.over_limit(self.received):
            self.request_error(Reject(413, "request body too large"))
            return
        if self.replay is not None:
            if self.replay_size + n <= self.server.limits.retry_buffer:
                if self.replay:
                    self.replay.append(data)  # type: ignore[union-attr]
                else:
                    self.replay = [data]
                self.replay_size += n
            else:
                self.replay = None
        if self.mirrors:
            self.server.mirror.feed(self.mirrors, data)
        if self.wire:
            self.conn.write(chunk(data) if self.head.chunked else data)  # type: ignore[union-attr]
            self.body_sent += n
            self.progress += 1
        else:
            if self.pending:
                self.pending.append(data)  # type: ignore[union-attr]
            else:
                self.pending = [data]
            self.pending_size += n
            if self.pending_size > self.server.limits.pending_high:
                self.client.pause_reading(PAUSE_PENDING)

    def on_request_complete(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        if self.req_done:
            return
        self.req_done = True
        self.req_trailers = trailers
        if self.mirrors:
            self.server.mirror.launch(self.mirrors)
        if self.wire:
            if self.head.chunked:
                self.conn.write(last_chunk(trailers))  # type: ignore[union-attr]
            self.req_sent = True
            if self.phase == SENT:
                d = self.decision
                self._set_deadline(self.client.loop.time() + (d.retry.per_try_timeout or d.timeouts.read))  # type: ignore[union-attr]

    def request_error(self, r: Reject) -> None:
        """The client's body turned out malformed: no attempt may continue with it."""
        self._drop_conn()
        self._end_attempt(None, None)
        self.respond(r.status, r.reason)

