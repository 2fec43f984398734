"""Fire-and-forget request mirroring (Envoy request_mirror_policies, nginx mirror, MSE mirror-*).

A mirror copy is planned when the primary is routed (percentage sampling, in-flight cap),
collects the request body by reference while it streams to the primary (size cap), and is
sent by its own task, with its own timeout, once the body is complete. Nothing here can
change, delay or fail the primary: overflow drops the copy, errors only count. Responses to
mirrors are read (to keep the pooled connection usable) and ignored. Mirror outcomes are not
reported to the cluster manager, so a failing shadow never ejects anything.

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
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.proxy.heads import CRLF, RequestHead, _without
from gateway.types import MirrorPolicy, RequestView

if TYPE_CHECKING:
    from gateway.proxy.pool import UpstreamConnection
    from gateway.proxy.server import ProxyServer

log = logging.getLogger("gateway.proxy.mirror")


class _Failed(Exception):
    pass


class MirrorJob:
    __slots__ = ("addr", "head", "body", "size", "over")

    def __init__(self, addr: tuple[str, int], head: bytes, want_body: bool) -> None:
        self.addr = addr
        self.head = head  # without the final Content-Length line and CRLF
        self.body: list[bytes] | None = [] if want_body else None
        self.size = 0
        self.over = False


def shadow_host(host: bytes) -> bytes:
    """`cluster1` -> `cluster1-shadow`, `a.example:8080` -> `a.example-shadow:8080` (Envoy)."""
    if host.startswith(b"["):
        i = host.find(b"]") + 1
    else:
        i = host.rfind(b":")
        if i < 0:
            i = len(host)
    return host[:i] + b"-shadow" + host[i:]


def parse_target(url: str) -> tuple[str, int, str] | None:
    """`http://host[:port][template]` -> (host, port, template); None when unusable."""
    if not url.lower().startswith("http://"):
        return None
    rest = url[7:]
    cut = len(rest)
    for ch in "/?$":
        i = rest.find(ch)
        if 0 <= i < cut:
            cut = i
    authority, template = rest[:cut], rest[cut:]
    if "@" in authority or not authority:
        return None
    host, port = authority, 80
    if authority.startswith("["):
        end = authority.find("]")
        host = authority[1:end]
        if authority[end + 1: end + 2] == ":":
            port = int(authority[end + 2:])
    elif ":" in authority:
        host, p = authority.rsplit(":", 1)
        port = int(p)
    return host, port, template


class MirrorSender:
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.in_flight = 0
        self.sent = self.dropped = self.failed = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._targets: dict[str, tuple[str, int, str] | None] = {}

    def plan(self, head: RequestHead, view: RequestView, policies: Sequence[MirrorPolicy],
             parts: list[bytes]) -> list[MirrorJob] | None:
        limits = self.server.limits
        jobs: list[MirrorJob] = []
        for p in policies:
            if p.percentage < 100.0 and random.random() * 100.0 >= p.percentage:
                continue
            want_body = p.request_body and head.has_body
            if self.in_flight >= limits.max_mirrors_in_flight or (
                    want_body and head.length is not None and head.length > limits.max_mirror_body):
                self._count("dropped")
                continue
            path = head.path
            if p.backend is not None:
                ep = self.server.clusters.pick(p.backend, view)
                if ep is None:
                    self._count("failed")
                    continue
                addr = ep.address
            elif p.url:
                target = self._target(p.url)
                if target is None:
                    self._count("failed")
                    continue
                addr = (target[0], target[1])
                if target[2]:
                    path = _expand(target[2], head, view).encode("latin-1")
            else:
                continue
            if p.host:
                host = p.host.encode("latin-1")
            else:
                host = shadow_host(head.host_raw) if p.shadow_suffix else head.host_raw
            fwd = _without(parts, {b"content-length"}) if head.length is not None else parts
            out = [head.method, b" ", path, b" HTTP/1.1\r\nHost: ", host, CRLF]
            out += fwd
            jobs.append(MirrorJob(addr, b"".join(out), want_body))
            self.in_flight += 1
        return jobs or None

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
        loop = self.server.loop
        for j in jobs:
            if j.over:
                self.in_flight -= 1
                self._count("dropped")
                continue
            task = loop.create_task(self._run(j))
            self.tasks.add(task)
            task.add_done_callback(self._done)
        jobs.clear()

    def drop(self, jobs: list[MirrorJob]) -> None:
        for _ in jobs:
            self.in_flight -= 1
            self._count("dropped")
        jobs.clear()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.in_flight -= 1

    def _count(self, outcome: str) -> None:
        if outcome == "sent":
            self.sent += 1
        elif outcome == "dropped":
            self.dropped += 1
        else:
            self.failed += 1
        self.server.hooks.mirror(outcome)  # type: ignore[arg-type]

    def _target(self, url: str) -> tuple[str, int, str] | None:
        if url not in self._targets:
            t = None
            try:
                t = parse_target(url)
            except ValueError:
                pass
            if t is None:
                log.warning("mirror target %r is not usable (only http://host[:port][path])", url)
            self._targets[url] = t
        return self._targets[url]

    async def _run(self, job: MirrorJob) -> None:
        pool = self.server.pool
        conn: UpstreamConnection | None = None
        keep = False
        body = job.body or []
        head = job.head + (b"Content-Length: %d\r\n\r\n" % job.size if job.body is not None else CRLF)
        try:
            async with asyncio.timeout(self.server.limits.mirror_timeout):
                conn = pool.acquire(job.addr) or await pool.connect(job.addr)
                sink = _Sink(self.server.loop.create_future(), head.startswith(b"HEAD "))
                conn.owner = sink
                conn.transport.writelines([head, *body])
                keep = await sink.fut
            self._count("sent")
        except (OSError, TimeoutError, _Failed):
            self._count("failed")
        finally:
            if conn is not None:
                if keep:
                    pool.release(conn)
                else:
                    conn.close()

    async def stop(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _expand(template: str, head: RequestHead, view: RequestView) -> str:
    if "$" not in template:
        return template
    uri = view.path
    path, _, args = uri.partition("?")
    for var, val in (("$request_uri", uri), ("$uri", path), ("$args", args), ("$query_string", args),
                     ("$host", view.host), ("$scheme", "http"), ("$remote_addr", view.client_ip)):
        template = template.replace(var, val)
    return template


class _Sink:
    """Owner of a connection carrying a mirror copy: reads the response, ignores it."""

    __slots__ = ("fut", "head_only")
    client = None  # no client to batch writes for

    def __init__(self, fut: asyncio.Future[bool], head_only: bool) -> None:
        self.fut = fut
        self.head_only = head_only

    def on_response_head(self, conn: UpstreamConnection, status: int, reason: bytes,
                         headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        if self.head_only and not self.fut.done():
            self.fut.set_result(False)

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_complete(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        if not self.fut.done():
            self.fut.set_result(keep_alive)

    def on_upstream_failure(self, conn: UpstreamConnection, cause: str, exc: BaseException | None) -> None:
        if not self.fut.done():
            self.fut.set_exception(_Failed(cause))

    def on_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        self.on_upstream_failure(conn, "upgrade", None)

    def upstream_write_paused(self, paused: bool) -> None:
        pass
