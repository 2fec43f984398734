"""Informer against the embedded store: sync, events, indices, Gone relists, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.informer import Informer
from mcs_controller.access.resources import NAMESPACES, SERVICE_EXPORTS

FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}


async def until(pred: Callable[[], bool], within: float = 2.0) -> None:
    """Wait (bounded) for `pred` to hold."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def export(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels}}


class Recorder:
    """A handler that records (type, ns/name, rv, old rv) and checks cache coherence."""

    def __init__(self, inf: Informer | None = None) -> None:
        self.events: list[tuple[str, str, str, str | None]] = []
        self.inf = inf

    def __call__(self, etype: str, obj: dict, old: dict | None) -> None:
        meta = obj["metadata"]
        key = f"{meta.get('namespace', '')}/{meta['name']}"
        old_rv = old["metadata"]["resourceVersion"] if old else None
        self.events.append((etype, key, meta["resourceVersion"], old_rv))
        if self.inf is not None:  # the cache is updated before handlers run
            cached = self.inf.get(meta.get("namespace"), meta["name"])
            assert (cached is None) == (etype == "DELETED")

    def summary(self) -> list[tuple[str, str]]:
        return [(t, k) for t, k, _, _ in self.events]

    def clear(self) -> None:
        self.events.clear()


@pytest.fixture
async def cluster() -> EmbeddedCluster:
    c = EmbeddedCluster("c1")
    await c.create(NAMESPACES, {"metadata": {"name": "apps"}})
    return c


@pytest.fixture
async def informers() -> AsyncIterator[list[Informer]]:
    """Informers registered here are stopped after the test."""
    made: list[Informer] = []
    yield made
    for inf in made:
        await inf.stop()


async def started(made: list[Informer], inf: Informer, rec: Recorder | None = None) -> Informer:
    if rec is not None:
        rec.inf = inf
        inf.add_handler(rec)
    made.append(inf)
    inf.start()
    await asyncio.wait_for(inf.synced.wait(), 2)
    return inf


async def test_initial_sync_fills_cache_and_dispatches_added(cluster, informers):
    await cluster.create(SERVICE_EXPORTS, export("a", app="x"))
    await cluster.create(SERVICE_EXPORTS, export("b", "apps", app="y"))
    rec = Recorder()
    inf = Informer(cluster, SERVICE_EXPORTS, **FAST)
    assert not inf.synced.is_set()
    await started(informers, inf, rec)
    assert sorted(rec.summary()) == [("ADDED", "apps/b"), ("ADDED", "default/a")]
    assert inf.cluster == "c1" and inf.resource == SERVICE_EXPORTS
    assert {o["metadata"]["name"] for o in inf.items()} == {"a", "b"}
    assert inf.get("apps", "b")["metadata"]["labels"] == {"app": "y"}
    assert inf.get("default", "b") is None
    assert inf.reachable and inf.unreachable_since is None
    assert inf.resource_version == str(cluster.resource_version)


async def test_watch_events_reach_handlers_in_order_and_cache(cluster, informers):
    inf = await started(informers, Informer(cluster, SERVICE_EXPORTS, **FAST), rec := Recorder())
    created = await cluster.create(SERVICE_EXPORTS, export("a", app="x"))
    patched = await cluster.patch(SERVICE_EXPORTS, "default", "a", {"metadata": {"labels": {"app": "z"}}})
    await cluster.create(SERVICE_EXPORTS, export("b"))
    await cluster.delete(SERVICE_EXPORTS, "default", "a")
    await until(lambda: len(rec.events) == 4)
    rv_a = created["metadata"]["resourceVersion"]
    assert rec.events[0] == ("ADDED", "default/a", rv_a, None)
    assert rec.events[1] == ("MODIFIED", "default/a", patched["metadata"]["resourceVersion"], rv_a)
    assert rec.events[2][:2] == ("ADDED", "default/b")
    # DELETED carries the last state; old is what the cache held.
    t, key, _, old_rv = rec.events[3]
    assert (t, key, old_rv) == ("DELETED", "default/a", patched["metadata"]["resourceVersion"])
    assert inf.get("default", "a") is None and inf.get("default", "b") is not None
    assert inf.resource_version == str(cluster.resource_version)
    assert inf.list_count == 1


async def test_handler_exception_is_contained(cluster, informers, caplog):
    calls: list[str] = []

    def bad(etype: str, obj: dict, old: dict | None) -> None:
        calls.append(obj["metadata"]["name"])
        raise RuntimeError("boom")

    inf = Informer(cluster, SERVICE_EXPORTS, **FAST)
    inf.add_handler(bad)
    await started(informers, inf, rec := Recorder())
    for i in range(5):
        await cluster.create(SERVICE_EXPORTS, export(f"s{i}"))
    await until(lambda: len(rec.events) == 5)
    assert calls == [f"s{i}" for i in range(5)]  # the bad handler kept being called
    assert len(inf.items()) == 5
    failures = [r for r in caplog.records if "handler" in r.getMessage()]
    assert 1 <= len(failures) < 5  # logged, but throttled


async def test_late_handler_gets_existing_objects(cluster, informers):
    await cluster.create(SERVICE_EXPORTS, export("a"))
    inf = await started(informers, Informer(cluster, SERVICE_EXPORTS, **FAST))
    rec = Recorder()
    inf.add_handler(rec)
    assert rec.summary() == [("ADDED", "default/a")]


async def test_index_lookups_follow_changes(cluster, informers):
    await cluster.create(SERVICE_EXPORTS, export("a", app="x"))
    await cluster.create(SERVICE_EXPORTS, export("b", "apps", app="x"))
    inf = await started(informers, Informer(cluster, SERVICE_EXPORTS, **FAST), rec := Recorder())

    def names(idx: str, value: str) -> set[str]:
        return {o["metadata"]["name"] for o in inf.by_index(idx, value)}

    inf.add_index("app", lambda o: [o["metadata"].get("labels", {}).get("app", "")])
    inf.add_index("ns", lambda o: [o["metadata"]["namespace"]])
    assert names("app", "x") == {"a", "b"} and names("ns", "apps") == {"b"}
    await cluster.patch(SERVICE_EXPORTS, "default", "a", {"metadata": {"labels": {"app": "y"}}})
    await cluster.create(SERVICE_EXPORTS, export("c", app="y"))
    await until(lambda: len(rec.events) == 4)
    assert names("app", "x") == {"b"} and names("app", "y") == {"a", "c"}
    await cluster.delete(SERVICE_EXPORTS, "default", "c")
    await until(lambda: len(rec.events) == 5)
    assert names("app", "y") == {"a"} and names("app", "nope") == set()
    with pytest.raises(KeyError):
        inf.by_index("unknown", "x")


async def test_namespace_and_label_selector(cluster, informers):
    await cluster.create(SERVICE_EXPORTS, export("a", "apps", tier="web"))
    await cluster.create(SERVICE_EXPORTS, export("b", "apps", tier="db"))
    await cluster.create(SERVICE_EXPORTS, export("c", "default", tier="web"))
    inf = Informer(cluster, SERVICE_EXPORTS, namespace="apps", label_selector="tier=web", **FAST)
    await started(informers, inf, rec := Recorder())
    assert rec.summary() == [("ADDED", "apps/a")]
    # Relabelled out of the selector: DELETED; relabelled in: ADDED.
    await cluster.patch(SERVICE_EXPORTS, "apps", "a", {"metadata": {"labels": {"tier": "db"}}})
    await cluster.patch(SERVICE_EXPORTS, "apps", "b", {"metadata": {"labels": {"tier": "web"}}})
    await until(lambda: len(rec.events) == 3)
    assert rec.summary()[1:] == [("DELETED", "apps/a"), ("ADDED", "apps/b")]
    assert [o["metadata"]["name"] for o in inf.items()] == ["b"]


async def test_watch_end_rewatches_from_last_rv_without_relist(cluster, informers):
    inf = Informer(cluster, SERVICE_EXPORTS, watch_timeout=0.05, **FAST)
    await started(informers, inf, rec := Recorder())
    for i in range(3):
        await asyncio.sleep(0.08)  # at least one stream ended in between
        await cluster.create(SERVICE_EXPORTS, export(f"s{i}"))
    await until(lambda: len(rec.events) == 3)
    assert rec.summary() == [("ADDED", f"default/s{i}") for i in range(3)]
    assert inf.list_count == 1


async def test_bookmarks_advance_resource_version(informers):
    c = EmbeddedCluster("c1", bookmark_interval=0.02)
    inf = await started(informers, Informer(c, SERVICE_EXPORTS, **FAST))
    # Writes to another resource move the cluster's rv; only bookmarks tell this watch.
    await c.create(NAMESPACES, {"metadata": {"name": "x"}})
    await until(lambda: inf.resource_version == str(c.resource_version))


async def test_resume_within_history_replays_events_without_relist(cluster, informers):
    await cluster.create(SERVICE_EXPORTS, export("a"))
    inf = await started(informers, Informer(cluster, SERVICE_EXPORTS, **FAST), rec := Recorder())
    await inf.stop()
    await cluster.create(SERVICE_EXPORTS, export("b"))
    inf.start()
    await until(lambda: len(rec.events) == 2)
    assert rec.summary()[1] == ("ADDED", "default/b")
    assert inf.list_count == 1


async def test_gone_relists_and_dispatches_the_difference(informers):
    c = EmbeddedCluster("c1", history=3)
    for name in ("keep", "mod", "gone"):
        await c.create(SERVICE_EXPORTS, export(name))
    inf = await started(informers, Informer(c, SERVICE_EXPORTS, **FAST), rec := Recorder())
    inf.add_index("app", lambda o: [o["metadata"].get("labels", {}).get("app", "")])
    rv_mod = inf.get("default", "mod")["metadata"]["resourceVersion"]
    await inf.stop()
    # Meanwhile: more writes than the history holds, so the resume point is compacted.
    mod = await c.patch(SERVICE_EXPORTS, "default", "mod", {"metadata": {"labels": {"app": "m"}}})
    await c.delete(SERVICE_EXPORTS, "default", "gone")
    await c.create(SERVICE_EXPORTS, export("new", app="m"))
    for i in range(4):
        await c.create(NAMESPACES, {"metadata": {"name": f"filler{i}"}})
    rec.clear()
    inf.start()
    await until(lambda: inf.list_count == 2)
    await until(lambda: len(rec.events) == 3)
    assert sorted(rec.summary()) == [
        ("ADDED", "default/new"), ("DELETED", "default/gone"), ("MODIFIED", "default/mod"),
    ]  # nothing for "keep": its resourceVersion did not change
    modified = next(e for e in rec.events if e[0] == "MODIFIED")
    assert modified[2:] == (mod["metadata"]["resourceVersion"], rv_mod)
    assert sorted(inf.keys()) == [("default", "keep"), ("default", "mod"), ("default", "new")]
    assert {o["metadata"]["name"] for o in inf.by_index("app", "m")} == {"mod", "new"}
    # And the watch runs again after the relist.
    await c.delete(SERVICE_EXPORTS, "default", "keep")
    await until(lambda: len(rec.events) == 4)
    assert rec.summary()[-1] == ("DELETED", "default/keep")


async def test_outage_keeps_cache_flips_reachability_and_catches_up(cluster, informers):
    for name in ("keep", "mod", "gone"):
        await cluster.create(SERVICE_EXPORTS, export(name))
    inf = await started(informers, Informer(cluster, SERVICE_EXPORTS, **FAST), rec := Recorder())
    flips: list[bool] = []
    inf.add_reachability_handler(flips.append)
    rec.clear()

    cluster.set_reachable(False)
    await until(lambda: not inf.reachable)
    since = inf.unreachable_since
    assert since is not None and flips == [False]
    await asyncio.sleep(0.15)  # several failed retries
    assert inf.unreachable_since == since and flips == [False]
    assert len(inf.items()) == 3 and inf.get("default", "mod") is not None  # nothing forgotten
    assert rec.events == []

    # Changes made "behind" the outage (the embedded calls do not yield, so the
    # informer cannot see them before its next relist).
    cluster.set_reachable(True)
    await cluster.patch(SERVICE_EXPORTS, "default", "mod", {"metadata": {"labels": {"v": "2"}}})
    await cluster.delete(SERVICE_EXPORTS, "default", "gone")
    await cluster.create(SERVICE_EXPORTS, export("new"))
    await until(lambda: inf.reachable)
    await until(lambda: len(rec.events) == 3)
    assert flips == [False, True] and inf.unreachable_since is None
    assert sorted(rec.summary()) == [
        ("ADDED", "default/new"), ("DELETED", "default/gone"), ("MODIFIED", "default/mod"),
    ]
    assert inf.get("default", "mod")["metadata"]["labels"] == {"v": "2"}
    assert inf.list_count == 2
    await cluster.create(SERVICE_EXPORTS, export("after"))
    await until(lambda: len(rec.events) == 4)
    assert rec.summary()[-1] == ("ADDED", "default/after")


async def test_unreachable_from_the_start_then_syncs(cluster, informers):
    await cluster.create(SERVICE_EXPORTS, export("a"))
    cluster.set_reachable(False)
    inf = Informer(cluster, SERVICE_EXPORTS, **FAST)
    informers.append(inf)
    inf.start()
    await until(lambda: not inf.reachable)
    assert not inf.synced.is_set() and inf.items() == []
    cluster.set_reachable(True)
    await asyncio.wait_for(inf.synced.wait(), 2)
    assert inf.reachable and [o["metadata"]["name"] for o in inf.items()] == ["a"]


async def test_stop_ends_the_task(cluster):
    inf = Informer(cluster, SERVICE_EXPORTS, **FAST)
    task = inf.start()
    assert inf.start() is task  # idempotent
    await asyncio.wait_for(inf.synced.wait(), 2)
    await inf.stop()
    assert task.done()
    n = len(inf.items())
    await cluster.create(SERVICE_EXPORTS, export("late"))
    await asyncio.sleep(0.02)
    assert len(inf.items()) == n
