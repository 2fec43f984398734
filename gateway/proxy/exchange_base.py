"""What every part of an exchange shares: its state, and how it ends.

An exchange is one class built in four steps, each a module (single inheritance, so the data
path can be compiled to a native class): this base (state, responses of our own, endings) ->
retry.py (failures, retries, timeouts) -> response.py (upstream response -> client) ->
exchange.py (routing, picking, connecting, the request side).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final

from gateway.proxy.heads import RequestHead, local_response
from gateway.proxy.pool import Owner
from gateway.proxy.states import DONE, INF, M_NONE, NEW, PAUSE_UPSTREAM
from gateway.types import EWMA_FAILURE, Endpoint, RequestView, RouteDecision

if TYPE_CHECKING:
    from gateway.proxy.client import ClientConnection
    from gateway.proxy.mirror import MirrorJob
    from gateway.proxy.pool import UpstreamConnection
    from gateway.proxy.server import ProxyServer
    from gateway.proxy.throttle import SendThrottle


#: Attempt outcomes that fed load-balance ewma no response head (refused, reset, timed out).
_EWMA_FAILURES: Final = frozenset({"connect_failure", "reset", "timeout", "gateway_error"})

#: The statuses nginx's `add_header` (without `always`) adds its header to.
ADD_HEADER_STATUSES: Final = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})


class ExchangeBase(Owner):
    """State of one request/response; created when the client's request head is complete."""

    # Class-level defaults: __init__ sets only what differs per request (a hot path).
    phase = NEW
    decision: RouteDecision | None = None
    route = ""
    cluster = ""
    view: RequestView | None = None
    up_head = b""
    conn: UpstreamConnection | None = None
    wire = False  # self.conn takes request body bytes now
    ep: Endpoint | None = None
    attempt_t0 = 0.0  # time.monotonic() at this attempt's start (load-balance ewma; else 0)
    attempts = 0
    tried: list[Endpoint] | tuple[()] = ()  # endpoints tried so far
    pending: list[bytes] | tuple[()] = ()  # body bytes not yet sent upstream
    pending_size = 0
    replay: list[bytes] | tuple[()] | None = ()  # body kept for retries; None: too long
    replay_size = 0
    body_sent = 0
    received = 0  # request body bytes from the client so far
    req_sent = False
    req_trailers: list[tuple[bytes, bytes]] | None = None
    resp_started = False
    resp_mode = M_NONE
    resp_eof = False  # the upstream body ends when its connection closes
    status = 0
    deadline = INF
    total_deadline = INF
    progress = 0
    seen = -1
    t0 = 0.0
    connect_task: asyncio.Task[None] | None = None
    backoff: asyncio.TimerHandle | None = None
    last_error: tuple[int, str] | None = None
    free_retry = True
    mirrors: list[MirrorJob] | None = None
    client_close = False
    done = False
    sent_continue = False
    upgraded = False
    stale_ok = False
    # cookie session affinity (only when decision.affinity is set)
    sticky: str | None = None  # the request's sticky cookie value
    resp_extra: bytes = b""  # header lines added to the response head (Set-Cookie)
    resp_auth: bytes = b""  # auth-url: the auth service's Set-Cookie lines (auth_lines())
    auth_always = False  # auth-always-set-cookie: resp_auth goes on every answer
    intercepted = 0  # custom-http-errors: the upstream status the default backend's page replaces
    body_limit = -1  # request body bytes allowed (proxy-body-size); 0: any; -1: not routed yet
    resp_cors: bytes = b""  # enable-cors: the CORS lines of the answer
    held_limit: Any = None  # limit-connections: the RateLimit holding a slot for this request
    held_key = ""
    throttle: SendThrottle | None = None  # limit-rate: the response's bytes wait here
    resp_bytes = 0  # response body bytes to the client (the access log's body_bytes_sent)
    started = 0.0  # when the request head was complete (with an access log only)

    def __init__(self, client: ClientConnection, head: RequestHead) -> None:
        self.client = client
        self.server: ProxyServer = client.server
        self.head = head
        self.req_done = not (head.chunked or head.length)
        if self.server.access_log is not None:
            self.started = client.loop.time()

    def batched_client(self) -> ClientConnection | None:
        return self.client

    def over_limit(self, size: int) -> bool:
        """A request body of `size` bytes is over the route's proxy-body-size (before routing:
        over the gateway's Limits.max_request_body)."""
        limit = self.body_limit
        if limit < 0:
            glob = self.server.limits.max_request_body
            limit = glob if glob is not None else 0
        return limit > 0 and size > limit

    def _attempt(self, now: float = 0.0) -> None:
        """The next try on an endpoint (exchange.py)."""
        raise NotImplementedError

    # -- endings ------------------------------------------------------------------------------

    def respond(self, status: int, text: str, location: str | None = None,
                extra: bytes = b"") -> None:
        """A response of our own (404, 503, 502, 504, redirects) unless response bytes already left."""
        if self.done:
            return
        if self.resp_started:
            self._abort_client()
            return
        h = self.head
        close = (not h.keep_alive or not self.req_done or h.upgrade is not None
                 or self.server.draining or self.client.closing)
        self.client_close = close
        self.status = status
        self.resp_started = True
        if self.resp_auth:
            extra += self.auth_lines(status)
        data = local_response(
            status, text, close=close, head_only=h.head_only, request_id=h.request_id, location=location,
            extra=self.server.hsts_line(self.view) + extra)
        self.client.write(data)
        self.resp_bytes = len(data) - data.find(b"\r\n\r\n") - 4
        self._finish()

    def auth_lines(self, status: int) -> bytes:
        """The auth service's Set-Cookie lines for an answer with this status: as nginx's
        `add_header Set-Cookie $auth_cookie` (`always` with auth-always-set-cookie)."""
        return self.resp_auth if self.auth_always or status in ADD_HEADER_STATUSES else b""

    def _finish(self, now: float = 0.0) -> None:
        if self.done:
            return
        if self.connect_task is not None or self.backoff is not None:
            self._cancel_pending()
        if self.conn is not None:
            self._drop_conn()
        if self.ep is not None:
            self._end_attempt(None, None)
        self._mark_done()
        if not now:
            now = self.client.loop.time()
        self.server.hooks.observe(self.route, self.cluster, self.status, now - self.t0 if self.t0 else 0.0)
        access_log = self.server.access_log
        if access_log is not None:
            access_log.request(self, self.status, now)
        self.client.exchange_done(self, now)

    def client_lost(self) -> None:
        """The client connection closed under us: drop the attempt, report nothing upstream."""
        if self.done:
            return
        self._cancel_pending()
        self._drop_conn()
        self._end_attempt(None, None)
        self._mark_done()
        status, now = self.status if self.resp_started else 499, self.client.loop.time()
        self.server.hooks.observe(self.route, self.cluster, status, now - self.t0 if self.t0 else 0.0)
        access_log = self.server.access_log
        if access_log is not None:
            access_log.request(self, status, now)

    def _mark_done(self) -> None:
        """Ended: mirror copies still waiting for a body that will not come are dropped."""
        self.done = True
        self.phase = DONE
        if self.held_limit is not None:
            self.held_limit.release(self.held_key)
            self.held_limit = None
        if self.throttle is not None:
            self.throttle.cancel()
        if self.mirrors and not self.req_done:
            self.server.mirror.drop(self.mirrors)
            self.mirrors = None

    def _abort_client(self) -> None:
        """Response bytes already reached the client: the only honest signal left is closing."""
        self.client_close = True
        self.client.abort()
        self.client_lost()

    def _end_attempt(self, outcome: str | None, status: int | None, cause: str | None = None) -> None:
        ep = self.ep
        if ep is None:
            return
        self.ep = None
        ep.active_requests -= 1
        if self.attempt_t0 and outcome in _EWMA_FAILURES:  # no answer: count at least EWMA_FAILURE
            now = time.monotonic()
            ep.observe(max(now - self.attempt_t0, EWMA_FAILURE), now)
        if outcome is not None:
            self.server.clusters.report(ep, outcome, status)  # type: ignore[arg-type]
        if cause is not None:
            self.server.hooks.upstream_error(self.route, ep.cluster, cause)

    def _drop_conn(self) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            self.wire = False
            conn.close()
            self.client.resume_reading(PAUSE_UPSTREAM)

    def _cancel_pending(self) -> None:
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        if self.backoff is not None:
            self.backoff.cancel()
            self.backoff = None
