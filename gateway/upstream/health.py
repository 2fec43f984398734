"""Active HTTP health checks, one task per checked endpoint (Envoy HealthCheck semantics).

* The first completed check decides (Envoy's startup rule: one success marks a new host
  healthy; a new host that fails its first check stays out). Until then `healthy` is None,
  which balancing counts as healthy (Envoy's ignore_new_hosts_until_first_hc=false).
* Afterwards `unhealthy_threshold` consecutive failures mark it unhealthy and
  `healthy_threshold` consecutive successes mark it healthy again. Any failure counts toward
  the threshold, also an unexpected status (nginx/ALB/probe semantics; Envoy fails a host at
  once on a non-retriable status -- we deliberately do not).
* Interval with +-10 % jitter, the first check within 10 % of an interval; a bounded number
  of probes run at once; a removed endpoint's task is cancelled at once.

The probe is a raw asyncio HTTP/1.1 GET with `Connection: close`: cheaper than a client
library, and all we need is the status line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.types import Endpoint, HealthCheckPolicy, pod_tls_context

log = logging.getLogger("gateway.upstream.health")

#: Called after every check: (endpoint, check passed, endpoint's healthy flag changed).
ResultFn = Callable[[Endpoint, bool, bool], None]

_MAX_HEAD = 16384


async def http_probe(ip: str, port: int, path: str, host: str, within: float,
                     tls: bool = False, context: tuple[ssl.SSLContext, str] | None = None) -> int | None:
    """GET path (over unverified TLS with `tls`; `context`: a proxy-ssl-* profile's client
    context and server_hostname instead); the response status, or None on connect failure,
    timeout or garbage."""
    writer: asyncio.StreamWriter | None = None
    if tls and context is None:
        context = (pod_tls_context(), "")
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(
                ip, port, limit=_MAX_HEAD, ssl=context[0] if context else None,
                server_hostname=context[1] if context else None)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: amcs-gateway-health-check\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            line = await reader.readline()
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                return None
            status = int(parts[1])
            # Read the head so the peer is not reset mid-write; the body is not needed.
            await reader.readuntil(b"\r\n\r\n")
            return status
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ValueError, UnicodeError):
        return None
    finally:
        if writer is not None:
            writer.close()


def _no_profiles(profile: Any) -> tuple[ssl.SSLContext, str]:
    raise OSError("no proxy-ssl Secrets known")


@dataclass(eq=False)
class _Check:
    ep: Endpoint
    policy: HealthCheckPolicy
    host: str
    task: asyncio.Task[None] | None = None
    successes: int = 0
    failures: int = 0
    last_status: int | None = None


class HealthChecker:
    """Runs checks for the endpoints it is told about; reports every result."""

    def __init__(self, on_result: ResultFn | None = None, *, concurrency: int = 64) -> None:
        self.on_result = on_result
        self._sem = asyncio.Semaphore(concurrency)
        self._checks: dict[Endpoint, _Check] = {}
        #: (cluster, "success"|"failure") -> checks run; for metrics.
        self.results: Counter[tuple[str, str]] = Counter()
        #: (cluster, "healthy"|"unhealthy") -> transitions.
        self.transitions: Counter[tuple[str, str]] = Counter()
        self._closed = False
        #: proxy-ssl-* profile -> (client context, server_hostname); the app sets the
        #: proxy's (gateway/upstream_tls.py). Raises OSError when its Secret is unusable.
        self.tls_for: Callable[[Any], tuple[ssl.SSLContext, str]] = _no_profiles

    def __len__(self) -> int:
        return len(self._checks)

    def __contains__(self, ep: Endpoint) -> bool:
        return ep in self._checks

    def policy_of(self, ep: Endpoint) -> HealthCheckPolicy | None:
        chk = self._checks.get(ep)
        return chk.policy if chk else None

    def set(self, ep: Endpoint, policy: HealthCheckPolicy, host: str) -> None:
        """Check `ep` under `policy` (idempotent; a changed policy restarts its checks)."""
        if self._closed:
            return
        chk = self._checks.get(ep)
        if chk is not None:
            if chk.policy == policy and chk.host == host:
                return
            if chk.task is not None:
                chk.task.cancel()
        chk = _Check(ep, policy, host)
        self._checks[ep] = chk
        chk.task = asyncio.create_task(self._run(chk), name=f"hc:{ep.cluster}/{ep.ip}:{ep.port}")

    def remove(self, ep: Endpoint, *, reset: bool = True) -> None:
        """Stop checking `ep`; with `reset`, its verdict is forgotten (no checks: counts healthy)."""
        chk = self._checks.pop(ep, None)
        if chk is not None and chk.task is not None:
            chk.task.cancel()
        if reset:
            ep.healthy = None

    async def stop(self) -> None:
        self._closed = True
        tasks = [c.task for c in self._checks.values() if c.task is not None]
        self._checks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _run(self, chk: _Check) -> None:
        p = chk.policy
        await asyncio.sleep(random.random() * p.interval * 0.1)
        while True:
            async with self._sem:
                status = await self._probe(chk)
            if self._checks.get(chk.ep) is not chk:
                return  # removed or replaced while probing
            self.record(chk.ep, status is not None and status in p.expected_statuses, status)
            await asyncio.sleep(p.interval * (0.9 + 0.2 * random.random()))

    async def _probe(self, chk: _Check) -> int | None:
        p = chk.policy
        context = None
        if p.tls and p.tls_profile is not None:
            try:
                context = self.tls_for(p.tls_profile)
            except OSError:  # its Secret cannot be used: the routes answer 503 meanwhile
                return None
        return await http_probe(chk.ep.ip, chk.ep.port, p.path, chk.host, p.timeout, p.tls, context)

    def record(self, ep: Endpoint, ok: bool, status: int | None = None) -> None:
        """Apply one check result to `ep` (public so the state machine is testable alone)."""
        chk = self._checks.get(ep)
        if chk is None:
            return
        p = chk.policy
        chk.last_status = status
        if ok:
            chk.successes, chk.failures = chk.successes + 1, 0
        else:
            chk.successes, chk.failures = 0, chk.failures + 1
        self.results[(ep.cluster, "success" if ok else "failure")] += 1
        before = ep.healthy
        if before is None:
            ep.healthy = ok  # the first check decides
        elif before and not ok and chk.failures >= p.unhealthy_threshold:
            ep.healthy = False
        elif not before and ok and chk.successes >= p.healthy_threshold:
            ep.healthy = True
        changed = ep.healthy != before
        if changed:
            verdict = "healthy" if ep.healthy else "unhealthy"
            self.transitions[(ep.cluster, verdict)] += 1
            log.info("endpoint %s/%s:%d is %s (status %s)", ep.cluster, ep.ip, ep.port, verdict,
                     status if status is not None else "no response")
        if self.on_result is not None:
            self.on_result(ep, ok, changed)

    def last_status(self, ep: Endpoint) -> int | None:
        chk = self._checks.get(ep)
        return chk.last_status if chk else None
