"""Leader election over a coordination.k8s.io/v1 Lease, with client-go's semantics.

Two controller replicas run; only the Lease holder writes. A candidate takes the
Lease only when it is absent, released (empty holderIdentity), expired, or already
its own. Expiry is judged on the local monotonic clock from when *we* last saw the
record change (never from the remote renewTime), so skewed clocks cannot cause two
leaders. Every write is a replace() carrying the resourceVersion we read, so two
candidates racing for an expired Lease get one success and one 409.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mcs_controller.access import errors
from mcs_controller.access.api import JSON, ClusterClient
from mcs_controller.access.resources import LEASES

if TYPE_CHECKING:
    from mcs_controller.ops.metrics import ControllerMetrics

log = logging.getLogger(__name__)

#: client-go's leaderelection.JitterFactor: renew_deadline must exceed retry_period * this.
JITTER_FACTOR = 1.2


def micro_time(dt: datetime | None = None) -> str:
    """metav1.MicroTime as the API server writes it: 2026-11-23T18:00:00.000000Z."""
    dt = (dt or datetime.now(UTC)).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """hostname_uuid, like kube-controller-manager: unique even across restarts."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


async def _call(cb: Callable[[], Any] | None) -> None:
    """Run a sync or async callback."""
    if cb is None:
        return
    result = cb()
    if inspect.isawaitable(result):
        await result


class LeaderElector:
    """Campaign for a Lease; while holding it run `on_started_leading`, renew, release."""

    def __init__(
        self,
        client: ClusterClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], Awaitable[Any]] | None = None,
        on_stopped_leading: Callable[[], Any] | None = None,
        release_on_cancel: bool = True,
        rejoin: bool = True,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        if not identity:
            raise ValueError("leader election identity must not be empty")
        if lease_duration <= renew_deadline:
            raise ValueError("lease_duration must be greater than renew_deadline")
        if renew_deadline <= JITTER_FACTOR * retry_period:
            raise ValueError(f"renew_deadline must exceed {JITTER_FACTOR} * retry_period")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        #: Graceful stop hands the Lease over at once (holder cleared, 1 s duration).
        self.release_on_cancel = release_on_cancel
        #: After losing the Lease, campaign again (True) or return from run() (client-go).
        self.rejoin = rejoin
        self.metrics = metrics
        self._leading = False
        self._lease: JSON | None = None  # last Lease object read or written
        self._observed_spec: JSON | None = None
        self._observed_time = 0.0  # time.monotonic() when the spec last changed
        self._held_by_other = False
        self._work: asyncio.Task[Any] | None = None
        self._run_task: asyncio.Task[Any] | None = None

    # -- public ---------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def leader(self) -> str:
        """The holder identity last observed ('' when none)."""
        return (self._observed_spec or {}).get("holderIdentity") or ""

    async def run(self) -> None:
        """Campaign and lead until cancelled (or, with rejoin=False, until leadership is lost)."""
        self._run_task = asyncio.current_task()
        try:
            while True:
                await self._acquire()
                await self._lead()
                if not self.rejoin:
                    return
        except asyncio.CancelledError:
            if self._leading:
                await self._stop_leading(release=self.release_on_cancel, why="stopping")
            raise

    async def stop(self) -> None:
        """Graceful stop of a running run(): stop the work, release the Lease."""
        task = self._run_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    # -- the client-go algorithm ------------------------------------------------

    def _observe(self, lease: JSON, now: float) -> None:
        spec = dict(lease.get("spec") or {})
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_time = now
        self._lease = lease

    def _lease_valid(self, now: float) -> bool:
        spec = self._observed_spec or {}
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        return self._observed_time + float(duration) > now

    def _spec(self, acquire_time: str, renew_time: str, transitions: int) -> JSON:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": acquire_time,
            "renewTime": renew_time,
            "leaseTransitions": transitions,
        }

    async def _try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards (client-go tryAcquireOrRenew)."""
        self._held_by_other = False
        stamp = micro_time()
        try:
            lease = await self.client.get(LEASES, self.namespace, self.name)
        except errors.NotFound:
            obj: JSON = {
                "apiVersion": LEASES.api_version,
                "kind": LEASES.kind,
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(stamp, stamp, 0),
            }
            try:
                created = await self.client.create(LEASES, obj)
            except errors.Conflict:  # AlreadyExists: another candidate created it first
                return False
            self._observe(created, time.monotonic())
            return True

        self._observe(lease, time.monotonic())
        old = self._observed_spec or {}
        holder = old.get("holderIdentity") or ""
        if holder and holder != self.identity and self._lease_valid(time.monotonic()):
            self._held_by_other = True
            return False

        transitions = int(old.get("leaseTransitions") or 0)
        if holder == self.identity:
            spec = self._spec(old.get("acquireTime") or stamp, stamp, transitions)
        else:
            spec = self._spec(stamp, stamp, transitions + 1)
        new = dict(lease)
        new["spec"] = {**old, **spec}  # keep fields we do not manage (strategy, ...)
        try:
            updated = await self.client.replace(LEASES, new)
        except errors.Conflict:  # someone wrote in between: they win this round
            return False
        self._observe(updated, time.monotonic())
        return True

    async def _attempt(self, budget: float) -> bool:
        """An attempt bounded by `budget` seconds; API errors count as failure."""
        try:
            async with asyncio.timeout(max(budget, 0.001)):
                return await self._try_acquire_or_renew()
        except TimeoutError:
            log.warning("lease request timed out", extra=self._fields())
        except errors.ApiError as exc:
            log.warning("lease request failed", extra={**self._fields(), "error": str(exc)})
        except Exception:  # a transport surprise must not end the campaign: retry, as client-go
            log.exception("lease request failed unexpectedly", extra=self._fields())
        return False

    async def _acquire(self) -> None:
        """Loop until we hold the Lease."""
        log.info("attempting to acquire leader lease", extra=self._fields())
        last_holder: str | None = None
        while True:
            if await self._attempt(self.renew_deadline):
                log.info("acquired leader lease", extra=self._fields())
                return
            if self.leader != last_holder:
                last_holder = self.leader
                log.info("lease held by another candidate", extra={**self._fields(), "holder": last_holder})
            # client-go jitters too; a small jitter keeps takeover close to lease expiry.
            await asyncio.sleep(self.retry_period * (1 + 0.2 * random.random()))

    async def _lead(self) -> None:
        """Hold the Lease: run the work, renew every retry_period; return when lost."""
        self._set_leading(True)
        if self.on_started_leading is not None:
            self._work = asyncio.create_task(self.on_started_leading(), name=f"leader:{self.name}")
        last_renew = time.monotonic()
        while True:
            work = self._work
            if work is not None and not work.done():
                await asyncio.wait([work], timeout=self.retry_period)
            else:
                await asyncio.sleep(self.retry_period)
            if work is not None and work.done() and not work.cancelled() and work.exception():
                exc = work.exception()
                log.error("leader work failed; releasing the lease", extra=self._fields(), exc_info=exc)
                await self._stop_leading(release=True, why="work failed")
                assert exc is not None
                raise exc
            remaining = self.renew_deadline - (time.monotonic() - last_renew)
            if await self._attempt(remaining):
                last_renew = time.monotonic()
                continue
            if self._held_by_other:
                await self._stop_leading(release=False, why=f"lease taken by {self.leader}")
                return
            if time.monotonic() - last_renew >= self.renew_deadline:
                await self._stop_leading(release=False, why="failed to renew within renew_deadline")
                return

    async def _stop_leading(self, *, release: bool, why: str) -> None:
        """Stop the work first, then the callback, then (maybe) hand the Lease over."""
        self._set_leading(False)
        log.info("stopped leading", extra={**self._fields(), "reason": why})
        work, self._work = self._work, None
        if work is not None and not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        try:
            await _call(self.on_stopped_leading)
        except Exception:
            log.exception("on_stopped_leading failed", extra=self._fields())
        if release:
            await self._release()

    async def _release(self) -> None:
        """Clear holderIdentity, duration 1 s, so a standby takes over at once (client-go)."""
        lease = self._lease
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        stamp = micro_time()
        old = lease.get("spec") or {}
        new = dict(lease)
        new["spec"] = {
            **old,
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": int(old.get("leaseTransitions") or 0),
        }
        try:
            async with asyncio.timeout(self.renew_deadline):
                updated = await self.client.replace(LEASES, new)
        except (errors.ApiError, TimeoutError) as exc:
            log.warning("failed to release lease", extra={**self._fields(), "error": str(exc)})
            return
        self._observe(updated, time.monotonic())
        log.info("released leader lease", extra=self._fields())

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        if self.metrics is not None:
            self.metrics.set_leader(leading)

    def _fields(self) -> dict[str, str]:
        return {"lease": f"{self.namespace}/{self.name}", "identity": self.identity}
