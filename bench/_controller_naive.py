"""The naive peer for bench/controller.py: an MCS mirror with no cache, relisting per change.

It shows what the real controller's informer caches and compare-before-write buy: the same
pure model function (`mirror_slices`) computes the imported slices, but every source-slice
watch event lists every source slice of every cluster and rewrites all of that Service's
imported slices in every consumer without comparing first. It talks to its clusters only
through the `ClusterClient` ABC, so it runs against embedded stores and over HTTP alike.
"""

from __future__ import annotations

import asyncio

from mcs_controller.access.api import JSON, ClusterClient
from mcs_controller.access.errors import NotFound
from mcs_controller.access.resources import (
    ENDPOINT_SLICES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
)
from mcs_controller.model import labels as L
from mcs_controller.model.desired import export_slice_labels, import_labels
from mcs_controller.model.slices import mirror_slices

NS = "bench"


class Naive:
    """Peer: no informer cache. A source-slice event lists every source slice of every
    cluster, recomputes the Service's imported slices and rewrites all of them everywhere.
    (Its start-up is one list per cluster, not one per Service: only changes relist.)"""

    BUILTIN = f"{L.LABEL_MANAGED_BY}={L.BUILTIN_SLICE_CONTROLLER}"

    def __init__(self, clusters: dict[str, ClusterClient], hub: ClusterClient | None = None):
        self.clusters = clusters
        self.pending: set[str] = set()
        self.wake = asyncio.Event()
        self.working = True
        self.syncs = 0
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run()))

    async def _run(self) -> None:
        lists = {n: await c.list(ENDPOINT_SLICES, NS, self.BUILTIN) for n, c in self.clusters.items()}
        for name in sorted({s["metadata"]["labels"][L.LABEL_SERVICE_NAME]
                            for listed in lists.values() for s in listed.items}):
            await self.sync(name, {n: listed.items for n, listed in lists.items()})
            await asyncio.sleep(0)  # embedded calls never suspend: let the watches run
        for n, c in self.clusters.items():
            self._tasks.append(asyncio.create_task(self._watch(c, lists[n].resource_version)))
        while True:
            self.working = False
            await self.wake.wait()
            self.wake.clear()
            self.working = True
            while self.pending:
                await self.sync(self.pending.pop())
                await asyncio.sleep(0)

    async def _watch(self, c: ClusterClient, rv: str) -> None:
        async for ev in c.watch(ENDPOINT_SLICES, NS, self.BUILTIN, resource_version=rv):
            if ev.type == "BOOKMARK":
                continue
            self.pending.add(ev.object["metadata"]["labels"][L.LABEL_SERVICE_NAME])
            self.wake.set()

    async def sync(self, name: str, listed: dict[str, list[JSON]] | None = None) -> None:
        self.syncs += 1
        desired: list[JSON] = []
        for cname, c in sorted(self.clusters.items()):
            try:
                await c.get(SERVICE_EXPORTS, NS, name)
            except NotFound:
                continue
            everything = (listed or {}).get(cname)
            if everything is None:  # the full relist
                everything = (await c.list(ENDPOINT_SLICES, NS, self.BUILTIN)).items
            mine = [s for s in everything if s["metadata"]["labels"][L.LABEL_SERVICE_NAME] == name]
            desired += mirror_slices(source_slices=mine, source_cluster=cname, namespace=NS,
                                     name_prefix=L.shadow_service_name(name),
                                     labels=export_slice_labels(name))
        for c in self.clusters.values():
            for res, obj_name, spec in (
                (SERVICES, L.shadow_service_name(name), {"ports": [{"name": "http", "port": 80}]}),
                (SERVICE_IMPORTS, name, {"type": "ClusterSetIP", "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP"}]}),
            ):
                try:
                    await c.get(res, NS, obj_name)
                except NotFound:
                    await c.create(res, {"metadata": {"name": obj_name, "namespace": NS,
                                                      "labels": import_labels(name)}, "spec": spec})
            sel = f"{L.LABEL_MCS_SERVICE_NAME}={name},{L.LABEL_OWNED_BY}={L.OWNED_BY_VALUE}"
            have = {s["metadata"]["name"] for s in (await c.list(ENDPOINT_SLICES, NS, sel)).items}
            for want in desired:  # no compare: every slice is rewritten
                if want["metadata"]["name"] in have:
                    have.discard(want["metadata"]["name"])
                    await c.replace(ENDPOINT_SLICES, want)
                else:
                    await c.create(ENDPOINT_SLICES, want)
            for extra in have:
                await c.delete(ENDPOINT_SLICES, NS, extra)

    def busy(self) -> bool:
        return self.working or bool(self.pending)

    def caches(self) -> list[object]:
        return []  # nothing held between changes

    def passes(self) -> int:
        return self.syncs

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
