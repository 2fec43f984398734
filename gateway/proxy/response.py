"""The response half of an exchange: upstream events -> client bytes (third step of the Exchange class).

Framing towards the client: Content-Length passes through; chunked or close-delimited
upstream bodies are re-chunked for HTTP/1.1 clients and sent raw (then close) to HTTP/1.0
clients; HEAD/204/304 have none. A status in RetryPolicy.on_statuses is drained and
discarded (never sent) when a retry is still allowed; then a status in RouteDecision.error_codes
(custom-http-errors) is replaced by the default backend's page (`_intercept`). 101 hands both
sockets to the splice.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from gateway.proxy.error_page import DISCARD, error_page_head
from gateway.proxy.heads import (
    CORS_HEADER_NAMES,
    CRLF,
    ResponseInfo,
    _without,
    chunk,
    last_chunk,
    response_head,
    status_line,
)
from gateway.proxy.retry import CAUSES, RetrySide
from gateway.proxy.states import (
    DRAINING,
    M_CHUNK,
    M_LENGTH,
    M_NONE,
    M_RAW,
    PAUSE_UPSTREAM,
    STREAMING,
)
from gateway.proxy.throttle import SendThrottle
from gateway.proxy.tunnel import splice

if TYPE_CHECKING:
    from gateway.proxy.pool import UpstreamConnection

#: custom-http-errors: an intercepted answer's body up to this long (Content-Length) is read
#: and dropped so its connection is reused; a longer one closes the connection unread.
_DRAIN_LIMIT: Final = 65536


class ResponseSide(RetrySide):
    # -- response (from the upstream connection) ----------------------------------------------

    def on_response_head(self, conn: UpstreamConnection, status: int, reason: bytes,
                         info: ResponseInfo, keep_alive: bool) -> None:
        if conn is not self.conn:
            return
        ep = self.ep
        if ep is not None and self.attempt_t0:  # load-balance ewma: the time to this head
            now = time.monotonic()
            ep.observe(now - self.attempt_t0, now)
        d = self.decision
        assert d is not None
        h = self.head
        if status in d.retry.on_statuses and self._may_retry("status"):
            self.phase = DRAINING
            self.wire = False
            self._end_attempt("http_5xx", status, f"status_{status}")
            self.last_error = (status, f"upstream answered {status}")
            if h.head_only:
                self._drop_conn()
                self._retry()
            return
        if d.error_page is not None and status in d.error_codes and self._intercept(conn, status, info):
            return
        self.status = status
        c = self.client
        if status == 101:
            if h.upgrade is None:
                self._drop_conn()
                self._failed("invalid_response", "101 without an upgrade request")
                return
            self.upgraded = self.resp_started = True
            extra = b"Connection: upgrade\r\nUpgrade: " + (info.upgrade or h.upgrade) + CRLF
            if self.resp_extra:
                extra += self.resp_extra
            if self.resp_auth:
                extra += self.auth_lines(101)
            c.write(response_head(status_line(101, reason), info.parts, extra))
            return
        if h.head_only or status == 204 or status == 304:
            mode = M_NONE
        elif info.length is not None:
            mode = M_LENGTH
        else:
            self.resp_eof = not info.chunked
            mode = M_RAW if h.http10 else M_CHUNK
        self.resp_mode = mode
        close = (not h.keep_alive or mode == M_RAW or h.upgrade is not None
                 or self.server.draining or c.closing)
        self.client_close = close
        if close:
            extra = b"Transfer-Encoding: chunked\r\nConnection: close\r\n" if mode == M_CHUNK else b"Connection: close\r\n"
        elif mode == M_CHUNK:
            extra = b"Transfer-Encoding: chunked\r\n"
        else:
            extra = b"Connection: keep-alive\r\n" if h.http10 else b""
        if self.resp_extra:  # Set-Cookie of session affinity, next to the upstream's own
            extra += self.resp_extra
        if self.resp_auth:  # auth-url's Set-Cookie
            extra += self.auth_lines(status)
        parts = info.parts
        if d.response_rewrite is not None:  # proxy-redirect-*, proxy-cookie-*
            parts = d.response_rewrite.apply(parts)
        hsts = self.server.hsts_line(self.view)
        cors = self.resp_cors
        if hsts or cors:  # ours replace the upstream's own, as ingress-nginx's more_set_headers
            names: set[bytes] = set()
            if hsts:
                extra += hsts
                names.add(b"strict-transport-security")
            if cors:
                extra += cors
                names |= CORS_HEADER_NAMES
            parts = [b"", *_without(parts[1:], names)]  # [0]: the status line's slot
        head = response_head(status_line(status, reason), parts, extra)
        c.write(head)
        if d.send_rate and mode != M_NONE:  # limit-rate: the head counts, as nginx counts it
            self.throttle = SendThrottle(self, d.send_rate, d.send_rate_after, self.t0, len(head))
        self.resp_started = True
        self.phase = STREAMING
        self.progress += 1  # the read timeout is re-armed lazily from here on (on_deadline)
        if h.head_only:  # llhttp would wait for the announced body: end here, do not reuse
            conn.keep_alive = False
            self.on_response_complete(conn, False)

    def _intercept(self, conn: UpstreamConnection, status: int, info: ResponseInfo) -> bool:
        """custom-http-errors: this answer is not forwarded, the default backend is asked for
        a page instead (ingress-nginx's error_page; gateway/proxy/error_page.py), like a retry
        with a fresh budget. A short body is drained to keep the connection; a longer one, or
        one of unknown length, is never read: that connection closes. False (the answer
        passes as it is): an upgrade, or a body too long to send again."""
        d = self.decision
        h = self.head
        assert d is not None
        page = d.error_page
        if page is None or self.replay is None or h.upgrade is not None:
            return False
        self.intercepted = status
        self.wire = False
        self._end_attempt("success" if status < 500 else "http_5xx", status)
        self.decision = page
        self.up_head = error_page_head(h, status, page.set_headers)
        self.attempts = 0
        self.tried = ()
        self.free_retry = True
        self.resp_extra = b""  # an error page pins no session
        self.last_error = (status, f"upstream answered {status}; the default backend "
                                   f"{page.backend} has no usable endpoint")
        n = info.length
        if not h.head_only and n is not None and len(n) <= 6 and int(n) <= _DRAIN_LIMIT:
            self.phase = DRAINING  # on_response_complete -> _drained -> the error page
            return True
        self.conn = None
        conn.owner = DISCARD  # the rest of this read goes nowhere
        conn.transport.close()
        self.client.resume_reading(PAUSE_UPSTREAM)
        self._retry(0.0)
        return True

    def on_response_body(self, data: bytes) -> None:
        if self.phase != STREAMING:
            return
        self.progress += 1
        self.resp_bytes += len(data)
        if self.resp_mode == M_CHUNK:
            if not data:
                return
            data = chunk(data)
        if self.throttle is None:
            self.client.write(data)
        else:
            self.throttle.write(data)

    def on_response_complete(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        if conn is not self.conn or self.upgraded:  # 101: llhttp completes it, splicing follows
            return
        self.conn = None
        self.wire = False
        now = self.client.loop.time()
        if keep_alive and self.req_sent and conn.keep_alive:
            self.server.pool.release(conn, now)
        else:
            conn.close()
        if self.phase == DRAINING:
            self._drained()
            return
        self._response_done(conn.trailers, now)

    def _response_done(self, trailers: list[tuple[bytes, bytes]] | None, now: float = 0.0) -> None:
        """The upstream's response ended: the last chunk, the outcome, and the exchange's end,
        which waits for any bytes `limit-rate` still holds."""
        end = last_chunk(trailers) if self.resp_mode == M_CHUNK else b""
        self._end_attempt("success" if self.status < 500 else "http_5xx", self.status)
        throttle = self.throttle
        if throttle is not None and throttle.holding:
            if end:
                throttle.write(end)
            throttle.then = self._finish
            return
        if end:
            self.client.write(end)
        self._finish(now)

    def on_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        if conn is not self.conn or not self.upgraded:
            self._drop_conn()
            return
        self.conn = None
        conn.owner = None
        self._end_attempt("success", 101)
        splice(self.client, conn, rest)
        self._finish()

    def on_upstream_failure(self, conn: UpstreamConnection, cause: str, exc: BaseException | None) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        self.wire = False
        self.client.resume_reading(PAUSE_UPSTREAM)
        if self.phase == DRAINING:
            self._drained()
        elif self.phase == STREAMING:
            if cause == "reset" and exc is None and self.resp_eof:  # close-delimited body ended
                self._response_done(None)
            else:
                self._end_attempt(CAUSES[cause][2], None, cause)
                self._abort_client()
        else:
            self._failed(cause, str(exc) if exc else "")

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.client.pause_reading(PAUSE_UPSTREAM)
        else:
            self.client.resume_reading(PAUSE_UPSTREAM)

    def client_write_paused(self, paused: bool) -> None:
        conn = self.conn
        if conn is not None:
            if paused:
                conn.pause_reading()
            elif self.throttle is None or not self.throttle.holding:
                conn.resume_reading()

