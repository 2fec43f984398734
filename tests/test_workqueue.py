"""WorkQueue: dedup, one worker per key, re-queue after done, backoff, delays, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from mcs_controller.engine import ShutDown, WorkQueue


async def until(pred: Callable[[], bool], within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def get_now(q: WorkQueue) -> str:
    return await asyncio.wait_for(q.get(), 1)


@pytest.mark.parametrize(
    ("adds", "expected"),
    [
        (["a"], ["a"]),
        (["a", "a", "a"], ["a"]),
        (["a", "b", "a", "c", "b"], ["a", "b", "c"]),  # first-add order, no duplicates
        ([], []),
    ],
)
async def test_dedup_of_waiting_keys(adds, expected):
    q: WorkQueue[str] = WorkQueue()
    for key in adds:
        q.add(key)
    assert len(q) == len(expected)
    got = [await get_now(q) for _ in expected]
    assert got == expected and len(q) == 0


async def test_key_added_while_processing_is_requeued_once_after_done():
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert await get_now(q) == "a"
    q.add("a")
    q.add("a")
    assert len(q) == 0  # not handed out while being processed
    q.add("b")
    assert await get_now(q) == "b"
    q.done("b")
    q.done("a")
    assert len(q) == 1
    assert await get_now(q) == "a"
    q.done("a")
    assert len(q) == 0
    q.done("never-got")  # harmless


async def test_done_without_readd_does_not_requeue():
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    await get_now(q)
    q.done("a")
    assert len(q) == 0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.02)


async def test_waiting_get_wakes_on_add():
    q: WorkQueue[str] = WorkQueue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    q.add("x")
    assert await asyncio.wait_for(getter, 1) == "x"


async def test_workers_never_process_a_key_concurrently_and_rerun_after_readd():
    q: WorkQueue[str] = WorkQueue()
    active: set[str] = set()
    overlap: list[str] = []
    runs: dict[str, int] = {}
    max_parallel = 0

    async def handler(key: str) -> None:
        nonlocal max_parallel
        if key in active:
            overlap.append(key)
        active.add(key)
        max_parallel = max(max_parallel, len(active))
        runs[key] = runs.get(key, 0) + 1
        if runs[key] == 1:
            q.add(key)  # changed while being reconciled: must run again, later
        await asyncio.sleep(0.01)
        active.discard(key)

    workers = asyncio.create_task(q.run_workers(handler, concurrency=4))
    for key in ["a", "b", "c", "a", "b", "c"]:
        q.add(key)
    await until(lambda: runs == {"a": 2, "b": 2, "c": 2} and not active)
    await asyncio.sleep(0.03)
    assert runs == {"a": 2, "b": 2, "c": 2}  # re-queued exactly once
    assert overlap == []
    assert max_parallel > 1  # different keys do run in parallel
    q.shutdown()
    await asyncio.wait_for(workers, 1)


def test_backoff_grows_exponentially_caps_and_forget_resets():
    q: WorkQueue[str] = WorkQueue(base_delay=0.005, max_delay=0.1)
    delays = [q.when("a") for _ in range(7)]
    assert delays == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.08, 0.1, 0.1])
    assert q.num_requeues("a") == 7
    assert q.num_requeues("b") == 0 and q.when("b") == pytest.approx(0.005)  # per key
    q.forget("a")
    assert q.num_requeues("a") == 0
    assert q.when("a") == pytest.approx(0.005)


def test_default_backoff_is_5ms_to_60s():
    q: WorkQueue[str] = WorkQueue()
    assert q.when("a") == pytest.approx(0.005)
    for _ in range(100):
        q.when("a")
    assert q.when("a") == 60.0


async def test_add_rate_limited_delays_and_counts():
    q: WorkQueue[str] = WorkQueue(base_delay=0.04)
    q.add_rate_limited("a")
    assert q.num_requeues("a") == 1
    assert len(q) == 0
    await asyncio.sleep(0.01)
    assert len(q) == 0
    assert await asyncio.wait_for(q.get(), 1) == "a"


async def test_add_after_waits_then_adds():
    q: WorkQueue[str] = WorkQueue()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    q.add_after("a", 0.05)
    assert len(q) == 0
    assert await asyncio.wait_for(q.get(), 1) == "a"
    assert loop.time() - t0 >= 0.045
    q.add_after("b", 0)  # no delay: immediate
    assert len(q) == 1


@pytest.mark.parametrize("delays", [(5.0, 0.03), (0.03, 5.0), (0.03, 0.03)])
async def test_add_after_earliest_wins_and_fires_once(delays):
    q: WorkQueue[str] = WorkQueue()
    for d in delays:
        q.add_after("a", d)
    assert await asyncio.wait_for(q.get(), 1) == "a"
    q.done("a")
    await asyncio.sleep(0.05)
    assert len(q) == 0
    q.shutdown()  # cancels the (superseded or fired) timers


async def test_add_after_of_a_waiting_key_is_deduplicated():
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add_after("a", 0.01)
    await asyncio.sleep(0.03)
    assert len(q) == 1


async def test_run_workers_retries_with_backoff_then_forgets():
    q: WorkQueue[str] = WorkQueue(base_delay=0.005)
    calls: list[int] = []
    requeues_seen: list[int] = []

    async def handler(key: str) -> None:
        requeues_seen.append(q.num_requeues(key))
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("transient")

    workers = asyncio.create_task(q.run_workers(handler, concurrency=2))
    q.add("k")
    await until(lambda: len(calls) == 3)
    await until(lambda: q.num_requeues("k") == 0)
    assert requeues_seen == [0, 1, 2]  # failures counted, then forgotten on success
    assert q.retries_total == 2
    await asyncio.sleep(0.03)
    assert len(calls) == 3  # success is not retried
    q.shutdown()
    await asyncio.wait_for(workers, 1)


async def test_shutdown_wakes_getters_refuses_adds_and_drains():
    q: WorkQueue[str] = WorkQueue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    q.shutdown()
    with pytest.raises(ShutDown):
        await asyncio.wait_for(getter, 1)

    q2: WorkQueue[str] = WorkQueue()
    q2.add("a")
    q2.add_after("late", 0.01)
    q2.shutdown()
    assert q2.shutting_down
    q2.add("b")
    q2.add_rate_limited("c")
    assert len(q2) == 1
    assert await get_now(q2) == "a"  # already queued: still handed out
    await asyncio.sleep(0.03)
    with pytest.raises(ShutDown):  # "late" was cancelled, "b" and "c" refused
        await get_now(q2)


async def test_run_workers_returns_on_shutdown_and_cancel_stops_handlers():
    q: WorkQueue[str] = WorkQueue()
    seen: list[str] = []

    async def handler(key: str) -> None:
        seen.append(key)

    workers = asyncio.create_task(q.run_workers(handler, concurrency=3))
    q.add("a")
    await until(lambda: seen == ["a"])
    q.shutdown()
    await asyncio.wait_for(workers, 1)

    q2: WorkQueue[str] = WorkQueue()
    started = asyncio.Event()

    async def slow(key: str) -> None:
        started.set()
        await asyncio.sleep(10)

    workers2 = asyncio.create_task(q2.run_workers(slow, concurrency=2))
    q2.add("x")
    await asyncio.wait_for(started.wait(), 1)
    workers2.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(workers2, 1)


async def test_resync_every_enqueues_all_keys_periodically():
    q: WorkQueue[str] = WorkQueue()
    batches = 0

    def keys() -> list[str]:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise RuntimeError("keys_fn bug: logged, resync goes on")
        return ["a", "b"]

    task = q.resync_every(0.02, keys)
    assert len(q) == 0  # first resync after one period
    await until(lambda: len(q) == 2)
    assert {await get_now(q), await get_now(q)} == {"a", "b"}
    q.done("a")
    q.done("b")
    await until(lambda: batches >= 3 and len(q) == 2)
    q.shutdown()
    await asyncio.wait_for(task, 1)
    assert task.done()


async def test_resync_task_ends_promptly_on_shutdown():
    q: WorkQueue[str] = WorkQueue()
    task = q.resync_every(300, lambda: ["a"])
    await asyncio.sleep(0.01)
    q.shutdown()
    await asyncio.wait_for(task, 0.5)
    assert len(q) == 0
