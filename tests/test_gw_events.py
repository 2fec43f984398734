"""gateway/events.py: Events are written paced, once per waiting problem, and never pile up."""

from __future__ import annotations

import asyncio
import logging
import time

from gwkit import eventually

from gateway.events import EventRecorder
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import EVENTS, NAMESPACES


def event(i: int, message: str = "bad annotation") -> dict:
    return {"metadata": {"generateName": f"web-{i}.", "namespace": "demo"},
            "involvedObject": {"kind": "Ingress", "name": f"web-{i}", "namespace": "demo",
                               "uid": f"uid-{i}"},
            "reason": "AnnotationIgnored", "message": message, "type": "Warning"}


async def hub() -> EmbeddedCluster:
    cluster = EmbeddedCluster("hub")
    await cluster.create(NAMESPACES, {"metadata": {"name": "demo"}})
    return cluster


async def written(cluster: EmbeddedCluster) -> int:
    return len((await cluster.list(EVENTS, "demo")).items)


async def test_a_burst_goes_out_at_once_and_the_rest_at_the_steady_rate():
    cluster = await hub()
    recorder = EventRecorder(lambda e: cluster.create(EVENTS, e), burst=10, per_second=40)
    start = time.monotonic()
    for i in range(30):
        recorder.record(event(i))
    try:
        await asyncio.sleep(0.1)
        early = await written(cluster)
        assert 10 <= early <= 10 + 40 * (time.monotonic() - start) + 1
        async with asyncio.timeout(3):
            while await written(cluster) < 30:  # noqa: ASYNC110 (polled: the API has no push)
                await asyncio.sleep(0.01)
        assert time.monotonic() - start >= 20 / 40 * 0.9  # the 20 after the burst were paced
        assert recorder.sent == 30 and recorder.dropped == 0 and recorder.waiting == 0
    finally:
        await recorder.stop()


async def test_the_same_problem_waiting_is_queued_once_and_a_full_queue_drops(caplog):
    sent: list[dict] = []

    async def create(e: dict) -> None:
        sent.append(e)

    recorder = EventRecorder(create, burst=0, per_second=0.5, backlog=3)
    with caplog.at_level(logging.WARNING, logger="gateway.events"):
        for i in (0, 0, 1, 1, 2, 3, 4):
            recorder.record(event(i))
    try:
        assert recorder.waiting == 3 and recorder.dropped == 2
        assert caplog.text.count("event queue full") == 1  # once per burst of drops
        assert sent == []  # no token yet
    finally:
        await recorder.stop()


async def test_a_refused_write_is_forgotten_and_the_next_ones_go_out():
    sent: list[str] = []

    async def create(e: dict) -> None:
        if e["involvedObject"]["name"] == "web-0":
            raise RuntimeError("forbidden")
        sent.append(e["involvedObject"]["name"])

    recorder = EventRecorder(create, burst=5, per_second=100)
    for i in range(3):
        recorder.record(event(i))
    try:
        await eventually(lambda: len(sent) == 2, within=2.0)
        assert sent == ["web-1", "web-2"] and recorder.sent == 2
    finally:
        await recorder.stop()
