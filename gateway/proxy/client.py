"""Client side: one asyncio.Protocol per accepted connection, httptools parser callbacks.

Like uvicorn's httptools_impl: the parser drives everything; a request whose head is complete
becomes an `Exchange`. Pipelined requests queue behind the active one (reading pauses until
it is done, so the queue is bounded by one read). Reading also pauses while the upstream's
write buffer is full or too much body waits for a connection (reasons are bits in `paused`),
and the active upstream connection stops reading while our write buffer to the client is full.

One lazy timer per connection covers the header-read timeout (slowloris), the keep-alive
idle timeout and the active exchange's deadline: it never fires later than needed but is
rescheduled only when a deadline comes closer than the one it waits for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from gateway.proxy.exchange import Exchange
from gateway.proxy.heads import Peer, Reject, local_response, parse_request
from gateway.proxy.pool import send_pieces
from gateway.proxy.states import PAUSE_PENDING, PAUSE_PIPELINE, PAUSE_UPSTREAM
from gateway.proxy.tunnel import half_close

if TYPE_CHECKING:
    from gateway.proxy.exchange_base import ExchangeBase
    from gateway.proxy.pool import UpstreamConnection
    from gateway.proxy.server import ProxyServer

log = logging.getLogger("gateway.proxy")

IDLE, HEAD, BODY = range(3)  # where the parser is


class _Stop(Exception):
    """Raised from a parser callback to stop parsing the rest of a buffer (closing)."""


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "server", "loop", "limits", "transport", "parser", "peer", "exchange", "pipeline",
        "parsing", "url", "headers", "hbytes", "raw_head", "state", "deadline", "timer",
        "tick", "paused", "write_paused", "closing", "counted", "tunnel", "tunnel_eofs",
        "upgrade_buf", "reject", "pending_error", "advancing", "trailers", "wbuf", "tls_peer",
        "source",
    )

    def __init__(self, server: ProxyServer, source: tuple[str, int] | None = None) -> None:
        self.server = server
        #: The client's address from a PROXY protocol header (None: the connection's peer).
        self.source = source
        self.loop = server.loop
        self.limits = lim = server.limits
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.peer: Peer = None  # type: ignore[assignment]
        self.exchange: Exchange | None = None  # the one whose response is being produced
        self.pipeline: deque[Exchange] | None = None
        self.parsing: Exchange | None = None  # the one receiving request body bytes
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.hbytes = 0
        self.raw_head = 0
        self.state = IDLE
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.tick = min(lim.header_timeout, lim.keepalive_timeout)
        self.paused = 0
        self.write_paused = False
        self.closing = False
        self.counted = False
        self.tunnel: UpstreamConnection | None = None
        self.tunnel_eofs = 0
        self.upgrade_buf: list[bytes] | None = None
        self.reject: Reject | None = None
        self.pending_error: Reject | None = None
        self.advancing = False
        self.wbuf: list[bytes] | None = None  # batching writes (see write())
        #: What the TLS handshake established about a client certificate (auth-tls-*),
        #: read when a request first needs it (gateway/client_auth.py).
        self.tls_peer: Any = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tr = transport  # type: ignore[assignment]
        srv = self.server
        if len(srv.conns) >= self.limits.max_connections or srv.stopping:
            self.closing = True
            tr.write(local_response(503, "too many connections", close=True))  # type: ignore[attr-defined]
            tr.close()
            return
        self.counted = True
        srv.conns.add(self)
        srv.hooks.connection_opened()
        peer = self.source or tr.get_extra_info("peername")
        local = tr.get_extra_info("sockname")
        ip = peer[0] if isinstance(peer, tuple) else ""
        self.peer = Peer(ip, local[1] if isinstance(local, tuple) else 0, srv.scheme,
                         srv.is_trusted if srv.is_trusted(ip) else None)
        self._idle(self.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.server.busy_poll > 0.0:
            self.server.read_happened()
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.upgrade_buf is not None:
            self.upgrade_buf.append(data)
            return
        if self.closing or self.pending_error is not None:
            return
        state = self.state
        if state != BODY:
            if state == IDLE:  # a new head starts: the header-read timeout runs from here
                self.state = HEAD
                self.deadline = self.loop.time() + self.limits.header_timeout
                if self.timer is None:
                    self._schedule(self.deadline)
            self.raw_head += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0]:]
            if not self.closing:
                self.upgrade_buf = [rest] if rest else []
                self.pause_reading(PAUSE_PIPELINE)  # nothing more until the 101 (or not)
        except httptools.HttpParserCallbackError as exc:
            if self.reject is not None:
                self._bad(self.reject)
            elif not isinstance(exc.__context__, _Stop):
                log.error("proxy bug while handling a request", exc_info=exc.__context__)
                self.abort()
        except httptools.HttpParserError as exc:
            self._bad(Reject(400, f"bad request: {exc}"))
        else:  # a head that never ends (httptools buffers partial lines without callbacks)
            if self.state == HEAD and self.raw_head > self.limits.max_header_size + self.limits.max_request_line:
                self._bad(Reject(431, "request header too large"))

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return half_close(self, self.tunnel, from_client=True)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.server.connection_closed(self)
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.client_lost()
        if self.tunnel is not None:
            self.tunnel.transport.close()
        self.pipeline = None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.exchange is not None:
            self.exchange.client_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.exchange is not None:
            self.exchange.client_write_paused(False)

    # -- httptools callbacks ------------------------------------------------------------------

    # No on_message_begin (one callback less per request): per-message state is reset when
    # it has been consumed (on_headers_complete / on_message_complete).

    def on_url(self, url: bytes) -> None:
        if self.closing:
            raise _Stop
        self.url += url
        if len(self.url) > self.limits.max_request_line:
            self.reject = Reject(414, "request-target too long")
            raise self.reject

    def on_header(self, name: bytes, value: bytes) -> None:
        lim = self.limits
        n = len(name) + len(value)
        self.hbytes += n + 4
        if self.state == BODY:  # chunked trailers
            if self.trailers is None:
                self.trailers = []
            hs = self.trailers
        else:
            hs = self.headers
        hs.append((name, value))
        if n > lim.max_field_size or self.hbytes > lim.max_header_size or len(hs) > lim.max_header_count:
            self.reject = Reject(431, "request header fields too large")
            raise self.reject

    def on_headers_complete(self) -> None:
        self.state = BODY
        self.raw_head = 0
        p = self.parser
        version = p.get_http_version()
        url, headers = self.url, self.headers
        self.url = b""
        self.headers = []
        try:
            if version != "1.1" and version != "1.0":
                raise Reject(505, "HTTP version not supported")
            head = parse_request(p.get_method(), url, version == "1.0", p.should_keep_alive(),
                                 p.should_upgrade(), headers, self.peer)
        except Reject as r:
            self.reject = r
            raise
        ex = Exchange(self, head)
        self.parsing = ex
        if self.exchange is None:
            self.exchange = ex
            ex.start()
        else:
            if self.pipeline is None:
                self.pipeline = deque()
            self.pipeline.append(ex)
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.on_request_body(body)

    def on_message_complete(self) -> None:
        self.state = IDLE
        self.raw_head = 0
        self.hbytes = 0
        ex = self.parsing
        self.parsing = None
        trailers = self.trailers
        if trailers is not None:
            self.trailers = None
        if ex is not None:
            ex.on_request_complete(trailers)
            if self.exchange is None and not self.closing and not self.pipeline:
                self._idle(self.limits.keepalive_timeout)  # answered before its end was parsed

    # -- called by the exchange -----------------------------------------------------------------

    def exchange_done(self, ex: ExchangeBase, now: float = 0.0) -> None:
        if self.exchange is ex:
            self.exchange = None
        if self.paused & (PAUSE_PENDING | PAUSE_UPSTREAM):  # that exchange's reasons end with it
            self.resume_reading(PAUSE_PENDING | PAUSE_UPSTREAM)
        if self.tunnel is not None:
            return
        # Answered before its body was read (413, 404 on a POST...): the rest of the body
        # would be read as a next request, so close. A bodiless request's end follows at once.
        if ex.client_close or (self.parsing is ex and not ex.req_done) or self.server.draining:
            self.close()
            return
        if self.advancing:
            return  # the loop below picks the next one
        self.advancing = True
        try:
            while self.exchange is None and self.pipeline and not self.closing:
                nxt = self.pipeline.popleft()
                self.exchange = nxt
                nxt.start()
        finally:
            self.advancing = False
        if self.exchange is not None or self.closing:
            return
        if self.pending_error is not None:
            r, self.pending_error = self.pending_error, None
            self._write_close(r)
            return
        if self.paused:
            self.resume_reading(PAUSE_PIPELINE)
        if self.state == IDLE:
            self._idle(self.limits.keepalive_timeout, now)

    def arm(self, when: float) -> None:
        """Make sure the timer fires no later than `when` (an exchange deadline)."""
        t = self.timer
        if t is None:
            self._schedule(when)
        elif when < t.when():
            t.cancel()
            self._schedule(when)

    def pause_reading(self, why: int) -> None:
        if not self.paused and not self.closing:
            self.transport.pause_reading()
        self.paused |= why

    def resume_reading(self, why: int) -> None:
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and not self.closing:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Write to the client, or batch while an upstream read is being parsed (`wbuf`),
        so a response head and its body leave in one send."""
        buf = self.wbuf
        if buf is None:
            self.transport.write(data)
        else:
            buf.append(data)

    def flush(self) -> None:
        buf = self.wbuf
        if buf:
            self.wbuf = []
            send_pieces(self.transport, buf)

    def close(self) -> None:
        if not self.closing:
            self.flush()
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.wbuf is not None:
            self.wbuf = []
        self.transport.abort()

    # -- internals ------------------------------------------------------------------------------

    def _idle(self, timeout: float, now: float = 0.0) -> None:
        self.state = IDLE
        self.deadline = (now or self.loop.time()) + timeout
        if self.timer is None:
            self._schedule(self.deadline)

    def _schedule(self, when: float) -> None:
        self.timer = self.loop.call_at(min(when, self.loop.time() + self.tick), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closing or self.tunnel is not None:
            return
        now = self.loop.time()
        ex = self.exchange
        if ex is not None:
            if now >= ex.deadline:
                ex.on_deadline(now)
            ex = self.exchange
            if self.closing or self.tunnel is not None:
                return
        if ex is None:
            if now >= self.deadline:
                if self.state == IDLE and self.raw_head == 0:
                    self.close()  # idle keep-alive (or never spoke): close quietly
                else:
                    self._write_close(Reject(408, "request header timeout"))
                return
            nxt = self.deadline
        else:
            nxt = ex.deadline
        if self.timer is None:
            self._schedule(nxt)

    def _bad(self, r: Reject) -> None:
        """A malformed or over-limit request: answer it once its turn comes, then close."""
        ex = self.exchange
        if ex is None:
            self._write_close(r)
        elif self.parsing is ex:
            self.parsing = None
            ex.request_error(r)
            self.close()
        else:  # a pipelined request is bad: the ones before it still get their responses
            bad = self.parsing
            if bad is not None and self.pipeline and self.pipeline[-1] is bad:
                self.pipeline.pop()
            self.parsing = None
            self.pending_error = r
            self.pause_reading(PAUSE_PIPELINE)

    def _write_close(self, r: Reject) -> None:
        if not self.closing:
            self.write(local_response(r.status, r.reason, close=True))
            self.server.hooks.observe("", "", r.status, 0.0)
            access_log = self.server.access_log
            if access_log is not None:
                access_log.rejected(self.peer, r.status)
            self.close()
