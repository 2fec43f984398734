"""Leader election over a Lease in the embedded store, with client-go's semantics."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from mcs_controller.access import errors
from mcs_controller.access.api import JSON
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import LEASES
from mcs_controller.engine.leader import LeaderElector
from mcs_controller.ops.metrics import ControllerMetrics, new_registry

NS, NAME = "kube-system", "amcs-controller"
MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
FAST = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.2}


class Candidate:
    """An elector plus a record of what its callbacks saw."""

    def __init__(self, cluster: EmbeddedCluster, identity: str, **kw: Any) -> None:
        self.started = 0
        self.stopped = 0
        self.work_cancelled = False
        opts = {**FAST, **kw}
        self.elector = LeaderElector(
            cluster,
            NS,
            NAME,
            identity,
            on_started_leading=opts.pop("on_started_leading", self._work),
            on_stopped_leading=self._stopped,
            **opts,
        )
        self.task: asyncio.Task[None] | None = None

    async def _work(self) -> None:
        self.started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.work_cancelled = True
            raise

    def _stopped(self) -> None:
        self.stopped += 1

    def start(self) -> Candidate:
        self.task = asyncio.create_task(self.elector.run())
        return self

    async def kill(self) -> None:
        """Cancel run(); the elector releases only if release_on_cancel is set."""
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def until(pred: Callable[[], bool], within: float = 3.0) -> float:
    """Wait for pred; returns the seconds it took."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > within:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def lease(cluster: EmbeddedCluster) -> JSON:
    return await cluster.get(LEASES, NS, NAME)


@pytest.fixture
async def cluster() -> EmbeddedCluster:
    return EmbeddedCluster("hub")


async def test_exactly_one_of_two_leads(cluster: EmbeddedCluster) -> None:
    a, b = Candidate(cluster, "a").start(), Candidate(cluster, "b").start()
    try:
        await until(lambda: a.elector.is_leader or b.elector.is_leader)
        for _ in range(15):  # several renew periods: never two leaders, never a flip
            assert a.elector.is_leader != b.elector.is_leader
            await asyncio.sleep(0.05)
        leader, standby = (a, b) if a.elector.is_leader else (b, a)
        assert (leader.started, standby.started) == (1, 0)
        assert (await lease(cluster))["spec"]["holderIdentity"] == leader.elector.identity
        assert standby.elector.leader == leader.elector.identity
    finally:
        await a.kill()
        await b.kill()


async def test_lease_written_as_client_go_writes_it(cluster: EmbeddedCluster) -> None:
    a = Candidate(cluster, "host-1_5d0e").start()
    try:
        await until(lambda: a.elector.is_leader)
        first = await lease(cluster)
        assert first["apiVersion"] == "coordination.k8s.io/v1" and first["kind"] == "Lease"
        assert (first["metadata"]["namespace"], first["metadata"]["name"]) == (NS, NAME)
        spec = first["spec"]
        assert set(spec) == {
            "holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions"
        }
        assert spec["holderIdentity"] == "host-1_5d0e"
        assert spec["leaseDurationSeconds"] == 1 and isinstance(spec["leaseDurationSeconds"], int)
        assert spec["leaseTransitions"] == 0
        assert MICRO.match(spec["acquireTime"]) and MICRO.match(spec["renewTime"])
        # Renewals move renewTime (and the resourceVersion), never acquireTime.
        await asyncio.sleep(0.3)  # at least one renewal (every 0.2 s)
        later = await lease(cluster)
        assert later["spec"]["acquireTime"] == spec["acquireTime"]
        assert later["spec"]["renewTime"] > spec["renewTime"]
        assert later["spec"]["leaseTransitions"] == 0
        assert int(later["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    finally:
        await a.kill()
    released = (await lease(cluster))["spec"]
    assert released["holderIdentity"] == "" and released["leaseDurationSeconds"] == 1
    assert released["leaseTransitions"] == 0 and MICRO.match(released["renewTime"])


async def test_graceful_release_hands_over_at_once(cluster: EmbeddedCluster) -> None:
    slow = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.2}
    a = Candidate(cluster, "a", **slow).start()
    await until(lambda: a.elector.is_leader)
    b = Candidate(cluster, "b", **slow).start()
    try:
        await asyncio.sleep(0.3)  # b has observed a's lease
        assert not b.elector.is_leader
        await a.elector.stop()
        assert not a.elector.is_leader and a.stopped == 1 and a.work_cancelled
        took = await until(lambda: b.elector.is_leader)
        assert took < 1.0  # well before the 3 s lease would have expired
        spec = (await lease(cluster))["spec"]
        assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    finally:
        await b.kill()


async def test_crashed_leader_is_replaced_after_expiry(cluster: EmbeddedCluster) -> None:
    a = Candidate(cluster, "a", release_on_cancel=False).start()
    await until(lambda: a.elector.is_leader)
    b = Candidate(cluster, "b").start()
    try:
        await asyncio.sleep(0.3)
        await a.kill()  # renew loop gone, lease left as it was: like a crashed process
        assert (await lease(cluster))["spec"]["holderIdentity"] == "a"
        took = await until(lambda: b.elector.is_leader)
        # Not before the 1 s lease runs out (as b observed it), and not much later.
        assert 0.6 < took < 2.5
        spec = (await lease(cluster))["spec"]
        assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
        await until(lambda: b.started == 1)  # the work task starts right after
    finally:
        await b.kill()


async def test_leader_that_cannot_renew_steps_down_then_rejoins(cluster: EmbeddedCluster) -> None:
    metrics = ControllerMetrics(new_registry(process=False))
    a = Candidate(cluster, "a", metrics=metrics).start()
    try:
        await until(lambda: a.elector.is_leader)
        assert metrics.registry.get_sample_value("mcs_controller_is_leader") == 1
        cluster.set_reachable(False)
        took = await until(lambda: not a.elector.is_leader)
        assert 0.3 < took < 1.5  # renew_deadline (0.6 s) after the last good renewal
        await until(lambda: a.stopped == 1)  # is_leader drops first, then work stops
        assert a.work_cancelled
        assert metrics.registry.get_sample_value("mcs_controller_is_leader") == 0
        cluster.set_reachable(True)
        await until(lambda: a.elector.is_leader)  # its own lease: re-acquired at once
        await until(lambda: a.started == 2)
    finally:
        await a.kill()


async def test_leader_steps_down_when_someone_else_holds_the_lease(cluster: EmbeddedCluster) -> None:
    a = Candidate(cluster, "a", rejoin=False).start()
    await until(lambda: a.elector.is_leader)
    current = await lease(cluster)
    current["spec"]["holderIdentity"] = "intruder"
    await cluster.replace(LEASES, current)
    await until(lambda: not a.elector.is_leader, within=1.0)
    await until(lambda: a.stopped == 1)
    assert a.task is not None
    await asyncio.wait_for(a.task, 1.0)  # rejoin=False: run() returns, as in client-go
    assert (await lease(cluster))["spec"]["holderIdentity"] == "intruder"


class LatentCluster(EmbeddedCluster):
    """The same store, but a read yields to the loop, as a network round trip does."""

    async def get(self, res: Any, namespace: str | None, name: str) -> JSON:
        obj = await super().get(res, namespace, name)
        await asyncio.sleep(0.01)
        return obj


async def test_racing_candidates_get_409_and_one_wins() -> None:
    cluster = LatentCluster("hub")
    await cluster.create(LEASES, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 4},
    })
    a = LeaderElector(cluster, NS, NAME, "a", **FAST)
    b = LeaderElector(cluster, NS, NAME, "b", **FAST)
    # Both read the same resourceVersion; the second replace must be refused.
    results = await asyncio.gather(a._try_acquire_or_renew(), b._try_acquire_or_renew())
    assert sorted(results) == [False, True]
    winner = "a" if results[0] else "b"
    spec = (await cluster.get(LEASES, NS, NAME))["spec"]
    assert spec["holderIdentity"] == winner and spec["leaseTransitions"] == 5


async def test_racing_creates_one_wins() -> None:
    cluster = LatentCluster("hub")
    a = LeaderElector(cluster, NS, NAME, "a", **FAST)
    b = LeaderElector(cluster, NS, NAME, "b", **FAST)
    with pytest.raises(errors.NotFound):
        await cluster.get(LEASES, NS, NAME)
    results = await asyncio.gather(a._try_acquire_or_renew(), b._try_acquire_or_renew())
    assert sorted(results) == [False, True]


async def test_failing_work_releases_and_raises(cluster: EmbeddedCluster) -> None:
    async def crash() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("controller crashed")

    a = Candidate(cluster, "a", on_started_leading=crash)
    with pytest.raises(RuntimeError, match="controller crashed"):
        await asyncio.wait_for(a.elector.run(), 2.0)
    assert not a.elector.is_leader and a.stopped == 1
    assert (await lease(cluster))["spec"]["holderIdentity"] == ""


def test_rejects_unsafe_timings(cluster: EmbeddedCluster) -> None:
    bad: list[dict[str, float]] = [
        {"lease_duration": 1.0, "renew_deadline": 1.0, "retry_period": 0.2},
        {"lease_duration": 2.0, "renew_deadline": 0.2, "retry_period": 0.2},
    ]
    for timing in bad:
        with pytest.raises(ValueError):
            LeaderElector(cluster, NS, NAME, "a", **timing)
    with pytest.raises(ValueError):
        LeaderElector(cluster, NS, NAME, "", **FAST)


