"""UDP and TCP listeners on one port, in front of a `Responder`.

UDP: one datagram in, at most one out; cache hits never leave `fast_answer`. On Linux
datagrams are received and answered in batches (`udp.BatchUdp`, two syscalls per batch
instead of two per query); elsewhere through asyncio's DatagramProtocol. TCP
(RFC 7766): 2-byte length framing, several queries per connection answered in order
(pipelining), an idle timeout, a cap on connections, and reads paused while the peer is
not reading its answers. Nothing a client sends can raise out of a protocol callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from clusterset_dns.responder import Responder
from clusterset_dns.udp import BatchUdp
from clusterset_dns.wire import fast_answer, header_reply
from clusterset_dns.zone import SERVFAIL

log = logging.getLogger("clusterset_dns.server")

#: One query in this many is timed for the latency histogram (timing every one costs
#: more than a cached answer itself).
LATENCY_SAMPLE = 64

Observe = Callable[[float], None]


def _noop(_: float) -> None:
    pass


class _ErrorLog:
    """At most one log line per minute about internal errors (never one per query)."""

    def __init__(self) -> None:
        self.count = 0
        self._last = 0.0

    def report(self, exc: BaseException) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= 60.0:
            self._last = now
            log.error("internal error answering a query (%d so far)", self.count, exc_info=exc)


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder, observe: Observe, errors: _ErrorLog) -> None:
        self.responder = responder
        self.plain = responder.plain
        self.edns = responder.edns
        self.alias = responder.alias
        self.observe = observe
        self.errors = errors
        self.transport: asyncio.DatagramTransport | None = None
        self._sendto: Callable = lambda *a: None
        self._tick = LATENCY_SAMPLE

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._sendto = transport.sendto  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        tick = self._tick - 1
        if tick:
            self._tick = tick
            try:
                reply = fast_answer(self.plain, self.edns, self.alias, data, False)
                if reply is None:
                    reply = self.responder.slow(data, False)
                if reply is not None:
                    self._sendto(reply, addr)
            except Exception as exc:  # noqa: BLE001 - one bad packet must not stop serving
                self._fail(data, addr, exc)
        else:
            self._tick = LATENCY_SAMPLE
            self._timed(data, addr)

    def _timed(self, data: bytes, addr) -> None:
        start = time.perf_counter()
        try:
            reply = self.responder.answer(data, False)
            if reply is not None:
                self._sendto(reply, addr)
        except Exception as exc:  # noqa: BLE001
            self._fail(data, addr, exc)
        self.observe(time.perf_counter() - start)

    def _fail(self, data: bytes, addr, exc: Exception) -> None:
        self.errors.report(exc)
        if len(data) >= 12 and not data[2] & 0x80:
            with contextlib.suppress(Exception):
                self._sendto(header_reply(data, SERVFAIL), addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp socket error: %s", exc)  # e.g. ICMP port unreachable from a client


class TcpProtocol(asyncio.Protocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.responder = server.responder
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.connections) >= self.server.max_connections:
            self.server.rejected += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        self.server.connections.add(self)
        self._timer = asyncio.get_running_loop().call_later(self.server.idle_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        idle = time.monotonic() - self.last
        if idle >= self.server.idle_timeout:
            self._timer = None
            if self.transport is not None:
                self.transport.close()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.idle_timeout - idle, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        buf = self.buf
        buf += data
        out: list[bytes] = []
        try:
            while len(buf) >= 2:
                size = (buf[0] << 8) | buf[1]
                if len(buf) < 2 + size:
                    break
                msg = bytes(buf[2:2 + size])
                del buf[:2 + size]
                reply = self._answer(msg)
                if reply is None:  # no header to answer (or a response): stop talking
                    self._flush(out)
                    assert self.transport is not None
                    self.transport.close()
                    return
                out.append(len(reply).to_bytes(2, "big"))
                out.append(reply)
        finally:
            self._flush(out)

    def _answer(self, msg: bytes) -> bytes | None:
        start = time.perf_counter()
        try:
            reply = self.responder.answer(msg, True)
        except Exception as exc:  # noqa: BLE001
            self.server.errors.report(exc)
            reply = header_reply(msg, SERVFAIL) if len(msg) >= 12 and not msg[2] & 0x80 else None
        self.server.observe_tcp(time.perf_counter() - start)
        return reply

    def _flush(self, out: list[bytes]) -> None:
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))
            out.clear()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # the peer is not reading: stop taking queries

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class DnsServer:
    """Binds UDP and TCP on the same (host, port); port 0 picks one free for both."""

    def __init__(
        self,
        responder: Responder,
        host: str = "0.0.0.0",
        port: int = 53,
        *,
        observe: Observe = _noop,
        observe_tcp: Observe = _noop,
        idle_timeout: float = 30.0,
        max_connections: int = 1024,
        udp_batch: bool = True,
    ) -> None:
        self.responder = responder
        self.udp_batch = udp_batch
        self.host = host
        self.port = port
        self.observe = observe
        self.observe_tcp = observe_tcp
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.errors = _ErrorLog()
        self.connections: set[TcpProtocol] = set()
        self.rejected = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._batch: BatchUdp | None = None
        self._tcp: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        attempts = 20 if self.port == 0 else 1
        for attempt in range(attempts):
            udp_sock = socket.socket(_family(self.host), socket.SOCK_DGRAM)
            try:
                udp_sock.bind((self.host, self.port))
                port = udp_sock.getsockname()[1]
                tcp = await loop.create_server(
                    lambda: TcpProtocol(self), self.host, port,
                    family=_family(self.host), reuse_address=True, backlog=1024,
                )
            except OSError:
                udp_sock.close()
                if attempt + 1 == attempts:
                    raise
                continue  # the port UDP got is taken for TCP: try another
            break
        udp_sock.setblocking(False)
        with contextlib.suppress(OSError):  # bigger buffers absorb bursts
            udp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            udp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        batch = (BatchUdp.create(udp_sock, self.responder, self.observe, self.errors, LATENCY_SAMPLE)
                 if self.udp_batch else None)
        if batch is not None:
            batch.start(loop)
            self._batch = batch
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: UdpProtocol(self.responder, self.observe, self.errors), sock=udp_sock
            )
            self._udp = transport
        self._tcp = tcp
        self.address = (self.host, port)
        return self.address

    async def stop(self) -> None:
        """Stop listening, let written answers drain, close every connection."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        if self._tcp is not None:
            self._tcp.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._tcp.wait_closed(), 2.0)
            self._tcp = None
