"""The access log (`--access-log`): one JSON object per request.

The keys are nginx's variable names, as in an ingress-nginx `log-format-upstream` with
`log-format-escape-json`, plus `upstream_cluster`, `upstream_attempts` and `route`. Lines
are gathered on the event loop and written every 100 ms (or every 64 KiB) to a non-blocking
descriptor of their own, so a slow reader of the log (a full pipe to the container
runtime) never holds up requests: what the pipe does not take waits (up to 4 MiB) for the
next write, and past that is dropped and counted in
`gateway_access_log_dropped_lines_total`. (A writer thread was measured first: handing it
the batches cost 4 us a request on this VM, as much as formatting the line.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from json.encoder import encode_basestring as _string  # type: ignore[attr-defined]
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter

if TYPE_CHECKING:
    from gateway.proxy.exchange_base import ExchangeBase
    from gateway.proxy.heads import Peer

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1
FLUSH_BYTES = 64 * 1024
MAX_PENDING = 4 * 1024 * 1024  # bytes the descriptor did not take, kept for the next write


def open_log(path: str) -> int:
    """A non-blocking descriptor appending to `path` ("-": standard output, reopened through
    /proc so that its own descriptor stays blocking for everything else). OSError when it
    cannot be opened."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC
    if path != "-":
        return os.open(path, flags | os.O_CREAT, 0o644)
    try:
        return os.open("/proc/self/fd/1", flags)
    except OSError:  # no /proc: a blocking copy of standard output
        return os.dup(1)


class AccessLog:
    def __init__(self, path: str, registry: CollectorRegistry | None = None) -> None:
        """`path`: a file (appended to) or "-" for standard output. Raises OSError when it
        cannot be opened."""
        self.path = path
        self._fd = open_log(path)
        self._lines: list[str] = []
        self._size = 0
        self._pending = b""  # what the last write left
        self._partial = False  # the last write ended inside a line
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._failing = False  # a write error is logged once until writes work again
        self.written = 0  # lines written
        self.dropped = Counter("gateway_access_log_dropped_lines",
                               "Access log lines dropped: the log's reader fell behind, or "
                               "writing failed", registry=registry)

    # -- per request (on the event loop) ----------------------------------------------------

    def request(self, ex: ExchangeBase, status: int, now: float) -> None:
        """A finished exchange; `now` on the loop's clock (the exchange's stamps are too).
        The line is written by hand: json.dumps of a dict cost 8 us a request, this 2-3."""
        d = ex.decision
        if d is not None and not d.access_log:  # enable-access-log: "false"
            return
        h = ex.head
        ep = ex.ep
        tried = ex.tried
        if tried:
            addrs = ", ".join(f"{e.ip}:{e.port}" for e in tried)
            attempts = len(tried)
            if ep is not None and ep not in tried:
                addrs += f", {ep.ip}:{ep.port}"
                attempts += 1
        elif ep is not None:
            addrs, attempts = f"{ep.ip}:{ep.port}", 1
        else:
            addrs, attempts = "", 0
        agent = referer = ""
        for name, value in h.lower:  # (names as received)
            if len(name) == 10 and name.lower() == b"user-agent":
                agent = value.decode("latin-1")
            elif len(name) == 7 and name.lower() == b"referer":
                referer = value.decode("latin-1")
        upstream_time = f"{now - ex.t0:.3f}" if ex.t0 else "null"
        request_time = f"{now - ex.started:.3f}" if ex.started else "0.000"
        self._add(
            f'{{"time":"{self._now()}","remote_addr":"{h.client_ip}",'
            f'"request_method":{_string(h.method.decode("latin-1"))},"host":{_string(h.host)},'
            f'"request_uri":{_string(h.path.decode("latin-1"))},'
            f'"server_protocol":"{"HTTP/1.0" if h.http10 else "HTTP/1.1"}","status":{status},'
            f'"body_bytes_sent":{ex.resp_bytes},"request_time":{request_time},'
            f'"upstream_addr":"{addrs}","upstream_cluster":{_string(ex.cluster)},'
            f'"upstream_response_time":{upstream_time},"upstream_attempts":{attempts},'
            f'"route":{_string(ex.route)},"request_id":{_string(h.request_id.decode("latin-1"))},'
            f'"http_user_agent":{_string(agent)},"http_referer":{_string(referer)}}}')

    def rejected(self, peer: Peer, status: int) -> None:
        """A request refused before it was read whole (400 and the like: no exchange)."""
        self._add(f'{{"time":"{self._now()}","remote_addr":"{peer.ip}","status":{status}}}')

    def _now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:  # strftime once a second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((t - second) * 1000):03d}Z"

    def _add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Write what was gathered (and what the last write left); what does not fit waits
        for the next flush, up to MAX_PENDING, beyond which it is dropped and counted."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines and not self._pending:
            return
        lines, self._lines, self._size = self._lines, [], 0
        data = self._pending + (("\n".join(lines) + "\n").encode() if lines else b"")
        try:
            done = os.write(self._fd, data)
            self._failing = False
        except BlockingIOError:
            done = 0
        except OSError as exc:  # a full disk, a closed pipe: keep serving
            if not self._failing:
                self._failing = True
                log.warning("access log %s: cannot write: %s", self.path, exc.strerror)
            done = 0
            self.dropped.inc(data.count(b"\n"))
            data = b""
        if done:
            self.written += data.count(b"\n", 0, done)
            self._partial = data[done - 1] != 10  # the reader has the start of a line
        rest = data[done:]
        if len(rest) > MAX_PENDING:  # drop whole lines (the end of a started one stays)
            keep = rest.find(b"\n") + 1 if self._partial else 0
            self.dropped.inc(rest.count(b"\n", keep))
            rest = rest[:keep]
        self._pending = rest
        if rest:  # try again soon even when no request comes
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def reopen(self) -> None:
        """Open the path anew (after a rotation renamed the file; nginx's USR1): what is
        gathered goes to the old file first."""
        self.flush()
        try:
            fd = open_log(self.path)
        except OSError as exc:
            log.warning("access log %s: cannot reopen, still writing the old file: %s",
                        self.path, exc.strerror)
            return
        os.close(self._fd)
        self._fd = fd
        log.info("access log %s reopened", self.path)

    def close(self) -> None:
        """Write what is left (at the gateway's stop; what the reader does not take is lost)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines or self._pending:
            with_lines, self._lines = self._lines, []
            data = self._pending + (("\n".join(with_lines) + "\n").encode() if with_lines else b"")
            try:
                os.write(self._fd, data)
            except OSError:
                self.dropped.inc(data.count(b"\n"))
        os.close(self._fd)

