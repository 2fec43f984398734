"""Upstream side: one asyncio.Protocol per TCP connection and a keep-alive pool per address.

An `UpstreamConnection` parses responses with httptools and hands each event to its current
owner (an `Exchange` or a mirror sink) -- no buffering, no per-chunk task. A connection goes
back to the pool only after a complete response on a connection both sides keep alive; the
pool hands out the most recently used one (LIFO keeps few connections hot) and a periodic
sweep closes those idle longer than `upstream_idle_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any, Final

import httptools
from mypy_extensions import mypyc_attr

from gateway.proxy.heads import ResponseInfo
from gateway.proxy.known_answer import BARREN_LIMIT, KnownAnswer, learn
from gateway.proxy.tunnel import half_close
from gateway.types import pod_tls_context

if TYPE_CHECKING:
    from gateway.proxy.client import ClientConnection

log = logging.getLogger("gateway.proxy")

#: Writes are held until the end of the loop turn (one send per connection per turn, so the
#: peer wakes once for a turn's worth); a read or body piece this big goes at once instead.
WRITE_NOW: Final = 16384

Address = tuple[str, int]


def send_pieces(transport: asyncio.Transport, pieces: list[bytes]) -> None:
    """One send for what a turn queued on a connection (write for one piece, else writev)."""
    if len(pieces) == 1:
        transport.write(pieces[0])
    else:
        transport.writelines(pieces)


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Small heads and bodies leave at once (no Nagle delay) on an upstream socket."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass


@mypyc_attr(allow_interpreted_subclasses=True)
class Owner:
    """What a connection reports to whoever sent the current request on it (an `Exchange`, a
    mirror sink). This base ignores everything: as an owner, the rest of a read goes nowhere.
    A base class, not a Protocol, so that these per-response calls are native (see
    `gateway.types.ClusterManager`)."""

    def batched_client(self) -> ClientConnection | None:
        """Whose writes one upstream read batches (None: no client, a mirror copy)."""
        return None

    def on_response_head(self, conn: UpstreamConnection, status: int, reason: bytes,
                         info: ResponseInfo, keep_alive: bool) -> None:
        pass

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_complete(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        pass

    def on_upstream_failure(self, conn: UpstreamConnection, cause: str, exc: BaseException | None) -> None:
        pass

    def on_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        pass

    def upstream_write_paused(self, paused: bool) -> None:
        pass


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream address; events go to `owner`."""

    __slots__ = (
        "pool", "addr", "transport", "parser", "owner", "info", "trailers",
        "head_done", "interim", "keep_alive", "closed", "reused", "idle_since", "read_paused",
        "tunnel", "got_bytes", "idle_list", "out", "known", "fresh", "capture", "barren",
    )

    def __init__(self, pool: ConnectionPool, addr: Any) -> None:
        self.pool = pool
        self.addr = addr
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.owner: Owner | None = None
        self.info = ResponseInfo()  # the head of the response being read
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.head_done = False
        self.interim = False
        self.keep_alive = True
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.read_paused = False
        self.tunnel: asyncio.Protocol | None = None  # the client side once upgraded (101)
        self.got_bytes = False  # any byte of the current response arrived
        self.idle_list: list[UpstreamConnection] | None = None  # the pool's list for addr
        self.out: list[bytes] = []  # written at the end of this loop turn (ConnectionPool.flush_later)
        self.known: KnownAnswer | None = None  # the last plain answer head (known_answer.py)
        self.fresh = True  # llhttp is between messages: a read starts an answer
        self.capture: bytes | None = None  # the read whose answer head is being parsed from its start
        self.barren = 0  # learned heads replaced unused

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)
        self.pool.opened += 1
        self.pool.live.add(self)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.transport.write(data)  # type: ignore[attr-defined]
            return
        owner = self.owner
        if owner is None:  # unsolicited bytes on an idle connection: not reusable
            self.transport.close()
            return
        self.got_bytes = True
        client = owner.batched_client()  # what this read produces for it leaves at the turn's end
        if client is not None:
            if client.server.busy_poll > 0.0:
                client.server.read_happened()
            if client.wbuf is None:
                client.wbuf = []
                client.server.flush_later(client)
        if not (self.fresh and self._replayed(owner, data)):
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                if self.owner is owner:
                    owner.on_upgrade(self, data[exc.args[0]:])
            except httptools.HttpParserError as exc:
                if isinstance(exc, httptools.HttpParserCallbackError) and exc.__context__ is not None:
                    log.error("proxy bug while handling an upstream response", exc_info=exc.__context__)
                self._unreadable(owner, exc)
        if client is not None and len(data) >= WRITE_NOW and not client.closing:
            client.flush()  # a big read goes now, so the client's flow control sees it at once

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            return half_close(self.tunnel, self, from_client=False)  # type: ignore[arg-type]
        return None  # close; connection_lost tells the owner (close-delimited bodies end here)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.gone(self)
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.transport.close()  # type: ignore[attr-defined]
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.on_upstream_failure(self, "reset", exc)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.pause_reading()  # type: ignore[attr-defined]
        elif self.owner is not None:
            self.owner.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.resume_reading()  # type: ignore[attr-defined]
        elif self.owner is not None:
            self.owner.upstream_write_paused(False)

    # -- httptools callbacks ----------------------------------------------------------------

    # No on_message_begin/on_status (callbacks cost): per-message state is reset in
    # on_message_complete, and the client gets the standard reason phrase (as Envoy does).

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))
        else:
            self.info.add(name, value)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        captured = self.capture
        self.capture = None
        if status < 200 and status != 101:
            self.interim = True  # 100/102/103: not relayed (we answered 100 ourselves)
            self.info = ResponseInfo()
            return
        self.head_done = True
        self.keep_alive = ka = self.parser.should_keep_alive()
        info = self.info.finish()
        self.info = ResponseInfo()  # for the next response
        if captured is not None:  # before the owner uses info.parts
            self._learn(captured, status, info, ka)
        self.owner.on_response_head(self, status, b"", info, ka)  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        self.owner.on_response_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.head_done = False
        if self.interim:
            self.interim = False
            return
        self.fresh = True
        owner = self.owner
        if owner is not None:
            owner.on_response_complete(self, self.keep_alive)
        if self.trailers is not None:
            self.trailers = None

    # -- known answers (gateway/proxy/known_answer.py) ----------------------------------------

    def _replayed(self, owner: Owner, data: bytes) -> bool:
        """A read that starts an answer: handed over from the known head if it is that head
        and the whole answer (True); else llhttp reads it, and its head may be learned."""
        known = self.known
        if known is not None:
            hl = len(known.raw)
            if len(data) == hl + known.length and data[:hl] == known.raw:
                self._replay(owner, known, data, hl)
                return True
        self.fresh = False
        if self.barren < BARREN_LIMIT:
            self.capture = data
        return False

    def _replay(self, owner: Owner, known: KnownAnswer, data: bytes, hl: int) -> None:
        """A whole answer with the known head: the owner's calls as llhttp would make them."""
        known.hits += 1
        self.pool.replayed += 1
        self.keep_alive = ka = known.keep_alive
        try:
            owner.on_response_head(self, known.status, b"", known.info(), ka)
            if len(data) > hl:
                o = self.owner
                if o is not None:
                    o.on_response_body(data[hl:])
            o = self.owner
            if o is not None:
                o.on_response_complete(self, ka)
        except Exception as exc:  # as llhttp's path does with a callback that raised
            log.error("proxy bug while handling an upstream response", exc_info=exc)
            self._unreadable(owner, exc)

    def _unreadable(self, owner: Owner, exc: BaseException) -> None:
        """llhttp failed, or a callback raised: nothing more is read on this connection."""
        self.fresh = False  # for good: llhttp stops at an error
        if self.owner is owner:
            self.owner = None
            self.transport.close()
            owner.on_upstream_failure(self, "invalid_response", exc)
        elif self.owner is None:  # bytes past a complete answer: not reusable
            self.transport.close()

    def _learn(self, data: bytes, status: int, info: ResponseInfo, keep_alive: bool) -> None:
        found = learn(data, status, info, keep_alive)
        if found is not None:
            old = self.known
            if old is not None and not old.hits:
                self.barren += 1
            self.known = found

    # -- helpers ------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Queue `data` for this loop turn's one send on this connection."""
        out = self.out
        if len(data) >= WRITE_NOW:  # big body pieces go now: flow control sees them at once
            out.append(data)
            self.out = []
            send_pieces(self.transport, out)
            return
        if not out:
            self.pool.flush_later(self)
        out.append(data)

    def close(self) -> None:
        self.owner = None
        self.out = []
        if not self.closed:
            self.transport.close()


class ConnectionPool:
    """Idle keep-alive connections per upstream address, LIFO."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_idle: int, idle_timeout: float) -> None:
        self.loop = loop
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: dict[object, list[UpstreamConnection]] = {}  # by address (Endpoint.key)
        self.opened = 0
        self.closed = 0
        self.replayed = 0  # answers handed over from a known head (UpstreamConnection._replay)
        self.closing = False
        self.live: set[UpstreamConnection] = set()  # every open connection, idle or busy
        self._sweeper: asyncio.TimerHandle | None = None
        self.dirty: list[UpstreamConnection] = []  # with writes queued this loop turn
        #: proxy-ssl-* profiles -> (client context, server_hostname): the proxy's
        #: UpstreamTLSStore.context (gateway/upstream_tls.py); raises OSError when unusable.
        self.tls_for: Any = None

    @property
    def open_connections(self) -> int:
        return len(self.live)

    def flush_later(self, conn: UpstreamConnection) -> None:
        if not self.dirty:
            self.loop.call_soon(self._flush_dirty)
        self.dirty.append(conn)

    def _flush_dirty(self) -> None:
        """One send per connection for everything this loop turn queued: the upstream gets a
        turn's requests together and wakes once, not once per request (see ProxyServer.flush_later)."""
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            out = conn.out
            if out:
                conn.out = []
                tr = conn.transport
                if not conn.closed and not tr.is_closing():
                    send_pieces(tr, out)

    def idle_count(self) -> int:
        return sum(len(v) for v in self.idle.values())

    def acquire(self, addr: object) -> UpstreamConnection | None:
        """An idle connection to `addr` (an address tuple; `Endpoint.key` saves boxing one)."""
        lst = self.idle.get(addr)
        while lst:
            conn = lst.pop()
            if not conn.closed and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    async def connect(self, addr: Any) -> UpstreamConnection:
        """`addr`: (ip, port); (ip, port, "tls") for TLS (Endpoint.tls_key): then no
        certificate check and no SNI, ingress-nginx's proxy_ssl_verify/server_name defaults;
        (ip, port, UpstreamTLS) for TLS as a proxy-ssl-* profile says."""
        tls: ssl.SSLContext | None = None
        name: str | None = None
        if len(addr) == 3:
            if addr[2] == "tls":
                tls, name = pod_tls_context(), ""
            else:
                tls, name = self.tls_for(addr[2])
        _, conn = await self.loop.create_connection(
            lambda: UpstreamConnection(self, addr), addr[0], addr[1], ssl=tls, server_hostname=name)
        return conn

    def release(self, conn: UpstreamConnection, now: float = 0.0) -> None:
        """A connection whose response completed and whose request was fully sent."""
        conn.owner = None
        if conn.closed:
            return
        lst = conn.idle_list
        if lst is None:
            lst = self.idle.get(conn.addr)
            if lst is None:
                lst = self.idle[conn.addr] = []
            conn.idle_list = lst
        if self.closing or len(lst) >= self.max_idle or not conn.keep_alive:
            conn.transport.close()
            return
        if conn.read_paused:
            conn.resume_reading()
        conn.got_bytes = False
        conn.idle_since = now or self.loop.time()
        lst.append(conn)

    def gone(self, conn: UpstreamConnection) -> None:
        self.closed += 1
        self.live.discard(conn)
        lst = self.idle.get(conn.addr)
        if lst and conn in lst:
            lst.remove(conn)

    def start(self) -> None:
        period = max(0.05, min(5.0, self.idle_timeout / 2))
        self._sweeper = self.loop.call_later(period, self._sweep, period)

    def _sweep(self, period: float) -> None:
        limit = self.loop.time() - self.idle_timeout
        for lst in self.idle.values():
            for c in [c for c in lst if c.idle_since <= limit]:
                c.transport.close()
        if len(self.idle) > 64:  # forget addresses nobody is connected to any more
            used = {c.addr for c in self.live}
            for addr in [a for a, lst in self.idle.items() if not lst and a not in used]:
                del self.idle[addr]
        self._sweeper = self.loop.call_later(period, self._sweep, period)

    def close_idle(self) -> None:
        for lst in self.idle.values():
            for c in lst:
                c.transport.close()
            lst.clear()  # in place: busy connections keep a reference (idle_list)

    def close(self) -> None:
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.close_idle()
