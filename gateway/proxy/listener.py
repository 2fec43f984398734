"""A listener whose connections are looked at before a protocol takes them.

Used instead of asyncio's own server when a connection's first bytes decide something:

* `--proxy-protocol`: every connection starts with a PROXY protocol header (v1 or v2) from a
  load balancer in front; it is read and taken off the socket, and the client address it
  names is the connection's client address from then on (nginx's `listen ... proxy_protocol`
  with `real_ip_header proxy_protocol`, as ingress-nginx's `use-proxy-protocol` sets it). A
  connection without a valid header, or that sends none within the header timeout, is closed
  without an answer, as nginx does.
* ssl-passthrough (gateway/proxy/passthrough.py): the TLS ClientHello is peeked at to pick
  between splicing and terminating.

Then `terminate(sock, source)` hands the connection to the proxy (through the TLS handshake
on the HTTPS listener), with `source` the address the PROXY header named (None: the peer's).
Off the compiled data path: this costs a task, a peek and a read per connection, not per
request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gateway.proxy.proxy_protocol import NEED_MORE, PEEK, ProxyProtocolError, parse_proxy_header

if TYPE_CHECKING:
    from gateway.proxy.passthrough import Passthrough

log = logging.getLogger("gateway.proxy")

Source = tuple[str, int]
Terminate = Callable[[socket.socket, "Source | None"], None]
T = TypeVar("T")


def _settle(future: asyncio.Future) -> None:
    """A reader callback may run again before the waiting coroutine resumes."""
    if not future.done():
        future.set_result(None)


async def peek_until(loop: asyncio.AbstractEventLoop, conn: socket.socket, deadline: float,
                     parse: Callable[[bytes], T | str], size: int) -> T:
    """What `parse` makes of the bytes waiting on `conn` (peeked: they stay there), once it
    stops answering NEED_MORE. TimeoutError after `deadline` (loop time); ConnectionResetError
    when the peer closes first; whatever `parse` raises."""
    while True:
        readable = loop.create_future()
        loop.add_reader(conn.fileno(), _settle, readable)
        try:
            async with asyncio.timeout_at(deadline):
                await readable
        finally:
            loop.remove_reader(conn.fileno())
        data = conn.recv(size, socket.MSG_PEEK)
        if not data:
            raise ConnectionResetError("closed before its first bytes were complete")
        found = parse(data)
        if found != NEED_MORE:
            return found  # type: ignore[return-value]
        await asyncio.sleep(0.002)  # level-triggered: let more of it arrive


def handoff(loop: asyncio.AbstractEventLoop, factory: Callable[[Source | None], asyncio.Protocol],
            context: ssl.SSLContext | None, handshake_timeout: float) -> Terminate:
    """A `terminate`: the connection goes to a protocol of `factory(source)`, through the TLS
    handshake when `context` is given, as asyncio's own server would hand it over."""
    tasks: set[asyncio.Task] = set()
    timeout = handshake_timeout if context is not None else None

    def terminate(sock: socket.socket, source: Source | None) -> None:
        task = loop.create_task(loop.connect_accepted_socket(
            lambda: factory(source), sock, ssl=context, ssl_handshake_timeout=timeout))
        tasks.add(task)
        task.add_done_callback(lambda t: (tasks.discard(t), t.cancelled() or t.exception()))

    return terminate


class Acceptor:
    """The listening socket; each connection is read for its PROXY header (`proxy_protocol`),
    routed by `passthrough` when given, else handed to `terminate`."""

    def __init__(self, terminate: Terminate, *, proxy_protocol: bool, header_timeout: float,
                 passthrough: Passthrough | None = None) -> None:
        self.terminate = terminate
        self.proxy_protocol = proxy_protocol
        self.header_timeout = header_timeout
        self.passthrough = passthrough
        self.loop = asyncio.get_running_loop()
        self.sock: socket.socket | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        #: PROXY protocol headers by outcome: proxied (an address taken), local (the header
        #: said to use the connection's own: health checks), rejected (not a valid header),
        #: timeout, closed (gone before a whole header).
        self.headers = {"proxied": 0, "local": 0, "rejected": 0, "timeout": 0, "closed": 0}

    def listen(self, host: str, port: int, backlog: int = 1024) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._accept)
        return sock.getsockname()[1]

    def close(self) -> None:
        """Stop accepting; connections still being looked at are dropped."""
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for task in list(self.tasks):
            task.cancel()
        if self.passthrough is not None:
            self.passthrough.close()

    def _accept(self) -> None:
        assert self.sock is not None
        for _ in range(64):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors and the like: try again later
                log.warning("accept failed: %s", exc)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._route(conn))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task that `close` cancels."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _route(self, conn: socket.socket) -> None:
        source: Source | None = None
        if self.proxy_protocol:
            try:
                source = await self._proxy_header(conn)
            except (ProxyProtocolError, TimeoutError, OSError) as exc:
                conn.close()
                outcome = ("rejected" if isinstance(exc, ProxyProtocolError) else
                           "timeout" if isinstance(exc, TimeoutError) else "closed")
                self.headers[outcome] += 1
                if outcome == "rejected":
                    log.warning("connection closed: %s", exc)
                return
        if self.passthrough is not None:
            await self.passthrough.route(conn, source)
        else:
            self.terminate(conn, source)

    async def _proxy_header(self, conn: socket.socket) -> Source | None:
        """The client address of the connection's PROXY header (None: the peer's), the header
        taken off the socket."""
        deadline = self.loop.time() + self.header_timeout
        header = await peek_until(self.loop, conn, deadline, parse_proxy_header, PEEK)
        peer = conn.getpeername()
        taken = conn.recv(header.length)  # already waiting: exactly those bytes
        if len(taken) != header.length:
            raise ConnectionResetError("the PROXY header was cut short")
        self.headers["proxied" if header.source is not None else "local"] += 1
        if header.source is not None:
            log.debug("PROXY v%d from %s: client %s:%d", header.version, peer[0], *header.source)
        return header.source


class AcceptorCollector(Collector):
    """`gateway_proxy_protocol_connections_total{listener,outcome}` and
    `gateway_ssl_passthrough_connections_total{outcome}`, read from the acceptors at scrape."""

    def __init__(self, acceptors: Callable[[], Iterable[tuple[str, Acceptor | None]]]) -> None:
        self.acceptors = acceptors

    def collect(self):  # type: ignore[no-untyped-def]
        found = [(name, a) for name, a in self.acceptors() if a is not None]
        if any(a.proxy_protocol for _, a in found):
            headers = CounterMetricFamily(
                "gateway_proxy_protocol_connections",
                "Connections by the outcome of reading their PROXY protocol header",
                labels=["listener", "outcome"])
            for name, a in found:
                if a.proxy_protocol:
                    for outcome, n in sorted(a.headers.items()):
                        headers.add_metric([name, outcome], n)
            yield headers
        routed = [a.passthrough for _, a in found if a.passthrough is not None]
        if routed:
            family = CounterMetricFamily("gateway_ssl_passthrough_connections",
                                         "HTTPS listener connections by ssl-passthrough outcome",
                                         labels=["outcome"])
            for outcome, n in sorted(routed[0].outcomes.items()):
                family.add_metric([outcome], n)
            yield family
