"""ssl-passthrough (ingress-nginx's `--enable-ssl-passthrough` and `ssl-passthrough`
annotation): the HTTPS listener reads each new connection's TLS ClientHello without taking
it off the socket (MSG_PEEK). A server name that an Ingress marks `ssl-passthrough` is
spliced, still encrypted, to an endpoint of that rule's backend (any cluster, the
backend's balancing); every other connection goes to the TLS-terminating proxy, exactly as
if it had accepted it.

Connects feed the endpoint's outlier detection as the proxy's own do (a refused or timed
out connect is a `connect_failure`, so a dead pod is ejected for passthrough hosts too), and a
pair idle for `Limits.passthrough_idle_timeout` is closed.

Off the compiled data path: a passthrough connection costs one peek and a connect, then
raw chunks both ways; the terminated ones pay one peek more than without the flag.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from gateway.proxy.config import Limits
from gateway.proxy.listener import NEED_MORE, Source, Terminate, peek_until
from gateway.types import BackendRef, Endpoint, Outcome, RequestView

log = logging.getLogger("gateway.proxy")

#: Peeked bytes at most: a ClientHello record is at most 16 KiB plus its header.
_PEEK = 16384 + 5
#: Connect attempts to different endpoints before a passthrough connection is dropped.
ATTEMPTS = 3


def client_hello_sni(data: bytes) -> str | None:
    """The server name of the TLS ClientHello at the start of `data` (lower-cased; None: the
    client sent none), NEED_MORE when the record is not all there; ValueError: not a
    ClientHello."""
    if len(data) < 5:
        return NEED_MORE
    if data[0] != 0x16 or data[1] != 0x03:
        raise ValueError("not a TLS handshake")
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end:
        return NEED_MORE
    body = data[5:end]
    if len(body) < 4 or body[0] != 0x01:
        raise ValueError("not a ClientHello")
    hello = body[4:4 + int.from_bytes(body[1:4], "big")]
    try:
        pos = 2 + 32  # version, random
        pos += 1 + hello[pos]  # session id
        pos += 2 + int.from_bytes(hello[pos:pos + 2], "big")  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        if pos >= len(hello):
            return None  # no extensions
        ext_end = pos + 2 + int.from_bytes(hello[pos:pos + 2], "big")
        pos += 2
        while pos + 4 <= ext_end:
            kind = int.from_bytes(hello[pos:pos + 2], "big")
            size = int.from_bytes(hello[pos + 2:pos + 4], "big")
            pos += 4
            if kind == 0:  # server_name: list length, then (type, length, name) entries
                entry = pos + 2
                while entry + 3 <= pos + size:
                    length = int.from_bytes(hello[entry + 1:entry + 3], "big")
                    if hello[entry] == 0:
                        return hello[entry + 3:entry + 3 + length].decode("ascii").lower()
                    entry += 3 + length
                return None
            pos += size
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError("malformed ClientHello") from exc
    return None


class _Splice(asyncio.Protocol):
    """One side of a spliced pair: what it reads goes to the other side; write pressure on
    one side pauses reading on the other; a FIN is passed on, the second one closes both."""

    def __init__(self, live: set[_Splice] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Splice | None = None
        self.pending: list[bytes] = []
        self.eofs = 0
        self.live = live  # the listener's open pairs (closed when it stops)
        self.seen = 0.0  # loop time of the last byte read

    def idle_since(self) -> float:
        """Loop time of the pair's last byte either way."""
        return max(self.seen, self.peer.seen) if self.peer is not None else self.seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def join(self, peer: _Splice) -> None:
        self.peer, peer.peer = peer, self
        for side in (self, peer):
            if side.pending and side.peer is not None and side.peer.transport is not None:
                side.peer.transport.writelines(side.pending)
            side.pending = []

    def data_received(self, data: bytes) -> None:
        self.seen = asyncio.get_running_loop().time()
        if self.peer is None or self.peer.transport is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        other = self.peer.transport if self.peer is not None else None
        if other is None or other.is_closing() or not other.can_write_eof():
            return False
        other.write_eof()
        self.eofs += 1
        return self.eofs + (self.peer.eofs if self.peer else 0) < 2

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.live is not None:
            self.live.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Passthrough:
    """ssl-passthrough routing of the HTTPS listener's connections (gateway/proxy/listener.py
    accepts them). `target(server_name)`: the backend of a passthrough host, or None;
    `pick(ref, view, exclude)`: an endpoint of it (None: none usable), `report(endpoint,
    outcome)` what connecting to it did; `terminate(sock, source)`: hand a connection to the
    TLS-terminating proxy."""

    def __init__(self, target: Callable[[str], BackendRef | None],
                 pick: Callable[[BackendRef, RequestView, frozenset], Endpoint | None],
                 report: Callable[[Endpoint, Outcome], None],
                 terminate: Terminate, limits: Limits) -> None:
        self.target, self.pick, self.report, self.terminate = target, pick, report, terminate
        self.hello_timeout = limits.header_timeout
        self.connect_timeout = limits.passthrough_connect_timeout
        self.idle_timeout = limits.passthrough_idle_timeout
        self.loop = asyncio.get_running_loop()
        #: Connections by outcome: spliced, terminated (handed to TLS), unreachable, and
        #: closed for being idle (counted again: they were spliced first).
        self.outcomes = {"spliced": 0, "terminated": 0, "unreachable": 0, "idle_closed": 0}
        self.live: set[_Splice] = set()  # client sides of open spliced pairs
        self._sweeper: asyncio.TimerHandle | None = None

    def close(self) -> None:
        """Close the spliced pairs still open."""
        for side in list(self.live):
            if side.transport is not None:
                side.transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        """Close the pairs idle for `idle_timeout`; look again while any is open (a pair
        is closed at most a quarter of the timeout late)."""
        self._sweeper = None
        now = self.loop.time()
        for side in list(self.live):
            if now - side.idle_since() >= self.idle_timeout and side.transport is not None:
                self.outcomes["idle_closed"] += 1
                side.transport.close()  # (its connection_lost closes the other side)
        if self.live:
            self._sweeper = self.loop.call_later(self.idle_timeout / 4, self._sweep)

    async def route(self, conn: socket.socket, source: Source | None) -> None:
        """Splice `conn` when its ClientHello names a passthrough host, else terminate it.
        `source`: the client address from a PROXY protocol header (None: the peer's)."""
        try:
            deadline = self.loop.time() + self.hello_timeout
            name = await peek_until(self.loop, conn, deadline, client_hello_sni, _PEEK)
        except ConnectionError:
            conn.close()  # gone before saying anything
            return
        except (TimeoutError, ValueError, OSError):
            name = None  # not TLS, or too slow: the TLS proxy answers (and times out) as usual
        ref = self.target(name) if name else None
        if ref is None:
            self.outcomes["terminated"] += 1
            self.terminate(conn, source)
            return
        try:
            await self._splice(conn, ref, name or "", source)
        except Exception:
            log.exception("ssl-passthrough of %s failed", name)
            conn.close()

    async def _splice(self, conn: socket.socket, ref: BackendRef, name: str, source: Source | None) -> None:
        client_ip = source[0] if source is not None else str(conn.getpeername()[0])
        view = RequestView("", "/", name, {}, client_ip, "https")
        tried: frozenset = frozenset()
        for _ in range(ATTEMPTS):
            ep = self.pick(ref, view, tried)
            if ep is None:
                break
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, upstream = await self.loop.create_connection(_Splice, ep.ip, ep.port)
            except (OSError, TimeoutError) as exc:
                log.warning("ssl-passthrough %s: connect to %s:%d failed: %s", name, ep.ip, ep.port,
                            str(exc) or "timed out")
                self.report(ep, "connect_failure")
                tried = tried | {ep.address}
                continue
            self.report(ep, "success")
            try:
                _, client = await self.loop.connect_accepted_socket(lambda: _Splice(self.live), conn)
            except BaseException:
                if upstream.transport is not None:
                    upstream.transport.close()
                raise
            client.seen = upstream.seen = self.loop.time()
            self.live.add(client)
            client.join(upstream)
            self.outcomes["spliced"] += 1
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(self.idle_timeout / 4, self._sweep)
            return
        log.warning("ssl-passthrough %s: no endpoint of %s could be reached", name, ref)
        self.outcomes["unreachable"] += 1
        conn.close()
