"""Fire-and-forget request mirroring (Envoy request_mirror_policies, nginx mirror, MSE mirror-*).

A mirror copy is planned when the primary is routed (percentage sampling, in-flight cap),
collects the request body by reference while it streams to the primary (size cap), and is
sent once the body is complete, with its own deadline. Nothing here can change, delay or fail
the primary: overflow drops the copy, errors only count. Mirror outcomes are not reported to
the cluster manager, so a failing shadow never ejects anything.

Copies to one address are pipelined on a few connections of their own (`MirrorLine`), in
batches (at most about one per `Limits.mirror_hold` on a busy line), and the responses, read
in order, are only counted
(their parser reports message ends, not headers). A copy costs a few appends, not a whole
upstream exchange. A line whose oldest copy is past its deadline, or that the shadow stopped
reading, is closed and its copies fail; a full line (depth) opens another, up to a cap, then
copies are dropped. A line the shadow closed after many copies teaches the sender how many
it serves a connection, and later lines are replaced before that. HEAD copies (a response
parser cannot tell their bodies are absent), and every copy to a shadow that closes after
(nearly) every response, go one per connection over the shared pool instead.

Targets: a BackendRef (an endpoint picked by the cluster manager) or a URL `http://host[:port]
[path]` where `$request_uri`, `$uri`, `$args`, `$host`, `$scheme`, `$remote_addr` are
substituted; a URL without a path keeps the request's URI. Host: `MirrorPolicy.host`, else
the request's Host with `-shadow` appended to its name (before any port) unless
`shadow_suffix` is off.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from gateway.proxy.heads import CRLF, RequestHead, ResponseInfo, _without
from gateway.proxy.mirror_line import MirrorLine
from gateway.proxy.pool import Owner
from gateway.types import MirrorPolicy, RequestView
from gateway.variables import expand

if TYPE_CHECKING:
    from gateway.proxy.pool import UpstreamConnection
    from gateway.proxy.server import ProxyServer

log = logging.getLogger("gateway.proxy.mirror")

LINE_DEPTH: Final = 128  # copies waiting on one line (sent or queued) before another opens
LINES_PER_ADDRESS: Final = 4  # taking copies; as many more may be retired and draining
#: A shadow closing connections after fewer requests gets its copies one per connection.
MIN_LINE_BUDGET: Final = 8


class MirrorJob:
    """A copy waiting for the request body (a copy without one is sent as it is planned)."""

    __slots__ = ("addr", "head", "head_only", "body", "size", "over")

    def __init__(self, addr: Any, head: list[bytes], head_only: bool, want_body: bool) -> None:
        self.addr = addr
        self.head = head  # the head's pieces, without the final Content-Length line and CRLF
        self.head_only = head_only
        self.body: list[bytes] | None = [] if want_body else None
        self.size = 0
        self.over = False


def host_line(host: bytes) -> bytes:
    """The rest of a copy's request line, and its Host line."""
    return b" HTTP/1.1\r\nHost: " + host + CRLF


def shadow_host(host: bytes) -> bytes:
    """`cluster1` -> `cluster1-shadow`, `a.example:8080` -> `a.example-shadow:8080` (Envoy)."""
    if host.startswith(b"["):
        i = host.find(b"]") + 1
    else:
        i = host.rfind(b":")
        if i < 0:
            i = len(host)
    return host[:i] + b"-shadow" + host[i:]


def parse_target(url: str) -> tuple[Any, str] | None:
    """`http(s)://host[:port][template]` -> (address, template); the address is (host, port),
    or (host, port, "tls") for https (the pool's key for TLS, as Endpoint.tls_key); None
    when unusable."""
    lower = url.lower()
    tls = lower.startswith("https://")
    if not (tls or lower.startswith("http://")):
        return None
    rest = url[8:] if tls else url[7:]
    cut = len(rest)
    for ch in "/?$":
        i = rest.find(ch)
        if 0 <= i < cut:
            cut = i
    authority, template = rest[:cut], rest[cut:]
    if "@" in authority or not authority:
        return None
    host, port = authority, 443 if tls else 80
    if authority.startswith("["):
        end = authority.find("]")
        host = authority[1:end]
        if authority[end + 1: end + 2] == ":":
            port = int(authority[end + 2:])
    elif ":" in authority:
        host, p = authority.rsplit(":", 1)
        port = int(p)
    return ((host, port, "tls") if tls else (host, port)), template


class MirrorSender:
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.in_flight = 0
        self.sent = self.dropped = self.failed = 0
        self.tasks: set[asyncio.Task[None]] = set()  # connects only
        self.watch: deque[_Sink] = deque()  # in-flight HEAD copies, by deadline
        self._timer: asyncio.TimerHandle | None = None
        self._targets: dict[str, tuple[Any, str] | None] = {}
        self.lines: dict[Any, list[MirrorLine]] = {}  # by (host, port)
        #: Shadows that close after a response: their copies go one per pooled connection.
        self.no_pipelining: set[Any] = set()
        #: Requests a shadow serves on a connection before closing it, where it was seen to.
        self.budgets: dict[Any, int] = {}
        self._line_timer: asyncio.TimerHandle | None = None
        self._shadow_lines: dict[bytes, bytes] = {}
        #: The last Host looked up, and its line (starting with the empty Host's).
        self._shadow_last, self._shadow_line = b"", host_line(shadow_host(b""))
        #: The last address copies went to, and its lines. Addresses stay boxed objects here:
        #: compiled code would box a tuple[str, int] for each dict lookup, and a copy to an
        #: endpoint (whose `key` is boxed once) is then found by identity.
        self._last_addr: Any = None
        self._last_lines: list[MirrorLine] = []

    def plan(self, head: RequestHead, view: RequestView, policies: tuple[MirrorPolicy, ...],
             parts: list[bytes], up_head: bytes = b"", at: int = 0) -> list[MirrorJob] | None:
        """The copies that wait for the request body; the others are sent now. `up_head` and
        `at` (heads.lines_at): the primary's head and where its header lines begin; a copy of
        a request without a body reuses them (one piece, not four per line)."""
        limits = self.server.limits
        jobs: list[MirrorJob] | None = None
        lines = b""
        for p in policies:
            if p.percentage < 100.0 and random.random() * 100.0 >= p.percentage:
                continue
            want_body = p.request_body and head.has_body
            if self.in_flight >= limits.max_mirrors_in_flight or (
                    want_body and head.length is not None and head.length > limits.max_mirror_body):
                self._count("dropped")
                continue
            path = head.path
            addr: Any
            if p.backend is not None:
                ep = self.server.clusters.pick(p.backend, view)
                if ep is None:
                    self._count("failed")
                    continue
                if not p.tls:
                    addr = ep.key  # (its address, boxed once)
                else:
                    addr = ep.tls_key if p.tls_profile is None else (ep.ip, ep.port, p.tls_profile)
            elif p.url:
                target = self._target(p.url)
                if target is None:
                    self._count("failed")
                    continue
                addr = target[0]
                if target[1]:
                    path = expand(target[1], view).encode("latin-1")
            else:
                continue
            if p.host:
                after_path = host_line(p.host.encode("latin-1"))
            elif p.shadow_suffix:
                after_path = self._shadow_host_line(head.host_raw)
            else:
                after_path = host_line(head.host_raw)
            self.in_flight += 1
            if at and head.length is None and not head.chunked and not head.te_trailers:
                if len(lines) == 0:
                    lines = up_head[at:]
                # the header lines and the blank line: complete
                self._send(addr, [head.method, b" ", path, after_path, lines], None, head.head_only)
                continue
            out = [head.method, b" ", path, after_path]
            out += _without(parts, {b"content-length"}) if head.length is not None else parts
            if jobs is None:
                jobs = []
            jobs.append(MirrorJob(addr, out, head.head_only, want_body))
        return jobs

    def _shadow_host_line(self, host: bytes) -> bytes:
        """host_line(shadow_host(host)), remembered: a route sees the same few Host values
        again and again."""
        if host == self._shadow_last:  # (the same Host again: no hashing)
            return self._shadow_line
        line = self._shadow_lines.get(host)
        if line is None:
            line = host_line(shadow_host(host))
            if len(self._shadow_lines) >= 1024:
                self._shadow_lines.clear()
            self._shadow_lines[host] = line
        self._shadow_last, self._shadow_line = host, line
        return line

    def feed(self, jobs: list[MirrorJob], data: bytes) -> None:
        cap = self.server.limits.max_mirror_body
        for j in jobs:
            if j.body is not None:
                j.size += len(data)
                if j.size > cap:
                    j.body = None
                    j.over = True
                else:
                    j.body.append(data)

    def launch(self, jobs: list[MirrorJob]) -> None:
        """The request body is complete: send the copies that waited for it."""
        for j in jobs:
            if j.over:
                self.in_flight -= 1
                self._count("dropped")
                continue
            pieces = j.head
            pieces.append(b"Content-Length: %d\r\n\r\n" % j.size if j.body is not None else CRLF)
            self._send(j.addr, pieces, j.body, j.head_only)
        jobs.clear()

    def _send(self, addr: Any, pieces: list[bytes], body: list[bytes] | None,
              head_only: bool) -> None:
        """`addr`: a (host, port) tuple, kept boxed (see `_line`)."""
        if not head_only and not (len(self.no_pipelining) and addr in self.no_pipelining):
            line = self._line(addr)
            if line is None:
                self.in_flight -= 1
                self._count("dropped")
            else:
                line.send(pieces, body)
            return
        head = b"".join(pieces)
        sink = _Sink(self, head_only)
        conn = self.server.pool.acquire(addr)
        if conn is not None:
            sink.send(conn, head, body)
        else:  # only a connect needs a task
            task = self.server.loop.create_task(self._connect(addr, head, body, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        self._watch(sink)

    def _line(self, addr: Any) -> MirrorLine | None:
        """The first usable line to `addr` (filling one line keeps its batches big), a new
        one if all are full, else None."""
        if addr is self._last_addr or addr == self._last_addr:  # (copies repeat an address)
            lines = self._last_lines
        else:
            found = self.lines.get(addr)
            if found is None:
                found = self.lines[addr] = []
            lines = self._last_lines = found
            self._last_addr = addr
        for line in lines:
            if not line.paused and line.depth < LINE_DEPTH and not line.retired:
                return line
        if len(lines) >= LINES_PER_ADDRESS and (
                len(lines) >= 2 * LINES_PER_ADDRESS
                or sum(not line.retired for line in lines) >= LINES_PER_ADDRESS):
            return None
        line = MirrorLine(self, addr)
        lines.append(line)
        task = self.server.loop.create_task(line.connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return line

    def shadow_closed(self, line: MirrorLine) -> None:
        """The shadow answered `Connection: close` on `line` after `line.answers` copies: a
        shadow that does so (nearly) at once gets one copy per connection, one that served
        many a budget for its lines."""
        served = line.answers
        if served < MIN_LINE_BUDGET:
            self.no_pipelining.add(line.addr)
            return
        known = self.budgets.get(line.addr)
        if known is not None and known <= served:
            return
        self.budgets[line.addr] = served
        for other in self.lines.get(line.addr, ()):
            other.budget = served
            if other.carried >= served:
                other.retired = True

    def line_closed(self, line: MirrorLine) -> None:
        lines = self.lines.get(line.addr)
        if lines is not None and line in lines:
            lines.remove(line)

    def _arm_lines(self) -> None:
        if self._line_timer is None:
            period = max(0.01, self.server.limits.mirror_timeout / 4)
            self._line_timer = self.server.loop.call_later(period, self._check_lines)

    def _check_lines(self) -> None:
        """Close lines whose oldest copy is past its deadline (a stuck or slow shadow)."""
        self._line_timer = None
        now = self.server.loop.time()
        busy = False
        for lines in list(self.lines.values()):
            for line in list(lines):
                if line.deadlines and line.deadlines[0] <= now:
                    line.abort()
                elif line.depth:
                    busy = True
        if busy:
            self._arm_lines()

    def drop(self, jobs: list[MirrorJob]) -> None:
        for _ in jobs:
            self.in_flight -= 1
            self._count("dropped")
        jobs.clear()

    async def _connect(self, addr: Any, head: bytes, body: list[bytes] | None,
                       sink: _Sink) -> None:
        try:
            conn = await self.server.pool.connect(addr)
        except OSError:
            sink.end("failed")
            return
        if sink.done:  # timed out meanwhile
            conn.close()
        else:
            sink.send(conn, head, body)

    def _watch(self, sink: _Sink) -> None:
        """Mirror deadlines: one timeout for all, so a FIFO and a single timer suffice."""
        loop = self.server.loop
        sink.deadline = loop.time() + self.server.limits.mirror_timeout
        self.watch.append(sink)
        if self._timer is None:
            self._timer = loop.call_at(sink.deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.server.loop.time()
        w = self.watch
        while w and (w[0].done or w[0].deadline <= now):
            sink = w.popleft()
            if not sink.done:
                sink.end("failed")
        if w:
            self._timer = self.server.loop.call_at(w[0].deadline, self._expire)

    def _count(self, outcome: str, copies: int = 1) -> None:
        if outcome == "sent":
            self.sent += copies
        elif outcome == "dropped":
            self.dropped += copies
        else:
            self.failed += copies
        self.server.hooks.mirror(outcome, copies)  # type: ignore[arg-type]

    def _target(self, url: str) -> tuple[Any, str] | None:
        if url not in self._targets:
            t = None
            try:
                t = parse_target(url)
            except ValueError:
                pass
            if t is None:
                log.warning("mirror target %r is not usable (only http(s)://host[:port][path])", url)
            self._targets[url] = t
        return self._targets[url]

    async def stop(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for lines in list(self.lines.values()):
            for line in list(lines):
                line.abort()
        if self._line_timer is not None:
            self._line_timer.cancel()
            self._line_timer = None
        while self.watch:
            sink = self.watch.popleft()
            if not sink.done:
                sink.end("failed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Sink(Owner):
    """Owner of a connection carrying one mirror copy: reads the response and ignores it."""

    __slots__ = ("sender", "head_only", "conn", "done", "deadline")

    def __init__(self, sender: MirrorSender, head_only: bool) -> None:
        self.sender = sender
        self.head_only = head_only
        self.conn: UpstreamConnection | None = None
        self.done = False
        self.deadline = 0.0

    def send(self, conn: UpstreamConnection, head: bytes, body: list[bytes] | None) -> None:
        self.conn = conn
        conn.owner = self
        if body:
            conn.transport.writelines([head, *body])
        else:
            conn.transport.write(head)

    def end(self, outcome: str, keep: bool = False) -> None:
        if self.done:
            return
        self.done = True
        conn = self.conn
        if conn is not None:
            self.conn = None
            if keep:
                self.sender.server.pool.release(conn)
            else:
                conn.close()
        self.sender.in_flight -= 1
        self.sender._count(outcome)

    def on_response_head(self, conn: UpstreamConnection, status: int, reason: bytes,
                         info: ResponseInfo, keep_alive: bool) -> None:
        if self.head_only:  # llhttp would wait for the announced body
            self.end("sent")

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_complete(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        self.end("sent", keep_alive)

    def on_upstream_failure(self, conn: UpstreamConnection, cause: str, exc: BaseException | None) -> None:
        self.conn = None
        self.end("failed")

    def on_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        self.end("failed")

    def upstream_write_paused(self, paused: bool) -> None:
        pass

