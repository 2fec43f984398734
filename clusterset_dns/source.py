"""Informers -> catalog -> answer cache: what the controller wrote, as DNS sees it.

Two informers on the served cluster: every ServiceImport, and the EndpointSlices that
carry `multicluster.kubernetes.io/service-name` (exactly the imported ones). Each event
updates the catalog and drops the affected cached answers *in the same callback*, so
the next query after an informer sees a change already gets the new answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from clusterset_dns.catalog import Catalog, ServiceKey
from mcs_controller.access.api import JSON, ClusterClient
from mcs_controller.access.informer import Informer
from mcs_controller.access.resources import ENDPOINT_SLICES, SERVICE_IMPORTS
from mcs_controller.model import labels as L

log = logging.getLogger("clusterset_dns.source")

OnChange = Callable[[set[ServiceKey]], None]


def _meta(obj: JSON) -> JSON:
    meta = obj.get("metadata") or {}
    return {k: meta[k] for k in ("name", "namespace", "labels", "resourceVersion") if k in meta}


def trim_import(obj: JSON) -> JSON:
    """Only what DNS reads of a ServiceImport (the informer caches this, not managedFields)."""
    spec = obj.get("spec") or {}
    return {"metadata": _meta(obj),
            "spec": {k: spec[k] for k in ("type", "ports", "ips") if k in spec}}


def trim_slice(obj: JSON) -> JSON:
    """Only what DNS reads of an EndpointSlice: family, ports, addresses, ready, hostname."""
    endpoints = []
    for ep in obj.get("endpoints") or []:
        if not isinstance(ep, dict):
            continue
        kept = {k: ep[k] for k in ("addresses", "hostname") if k in ep}
        conditions = ep.get("conditions")
        if isinstance(conditions, dict) and "ready" in conditions:
            kept["conditions"] = {"ready": conditions["ready"]}
        endpoints.append(kept)
    return {"metadata": _meta(obj), "addressType": obj.get("addressType"),
            "ports": obj.get("ports") or [], "endpoints": endpoints}


class CatalogSource:
    """Keeps a `Catalog` equal to the cluster's imports; reports which services changed."""

    def __init__(
        self,
        client: ClusterClient,
        catalog: Catalog,
        on_change: OnChange,
        *,
        clock: Callable[[], float] = time.time,
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.catalog = catalog
        self.on_change = on_change
        self.on_synced = on_synced
        self.clock = clock
        self.imports = Informer(client, SERVICE_IMPORTS, transform=trim_import)
        self.slices = Informer(client, ENDPOINT_SLICES, label_selector=L.LABEL_MCS_SERVICE_NAME,
                               transform=trim_slice)
        self.imports.add_handler(self._on_import)
        self.slices.add_handler(self._on_slice)
        self._sync_task: asyncio.Task[None] | None = None

    @property
    def synced(self) -> bool:
        return self.imports.synced.is_set() and self.slices.synced.is_set()

    def _serial(self) -> int:
        return int(self.clock())

    def _on_import(self, etype: str, obj: JSON, old: JSON | None) -> None:
        if etype == "DELETED":
            keys = self.catalog.delete_import(obj, self._serial())
        else:
            keys = self.catalog.set_import(obj, self._serial())
        if keys:
            self.on_change(keys)

    def _on_slice(self, etype: str, obj: JSON, old: JSON | None) -> None:
        if etype == "DELETED":
            keys = self.catalog.delete_slice(obj, self._serial())
        else:
            keys = self.catalog.set_slice(obj, self._serial(), old)
        if keys:
            self.on_change(keys)

    async def start(self) -> None:
        """Start both informers; `on_synced` runs once both have listed."""
        self.imports.start()
        self.slices.start()
        self._sync_task = asyncio.create_task(self._await_sync(), name="clusterset_dns:sync")

    async def _await_sync(self) -> None:
        await self.imports.synced.wait()
        await self.slices.synced.wait()
        # The serial of the first answers: when the catalog was filled (G4).
        self.catalog.serial = max(self.catalog.serial, self._serial())
        log.info(
            "catalog synced",
            extra={"cluster": self.client.name, "services": self.catalog.service_count,
                   "endpoints": self.catalog.endpoint_count},
        )
        if self.on_synced is not None:
            self.on_synced()

    async def wait_synced(self, limit: float | None = None) -> None:
        await asyncio.wait_for(
            asyncio.gather(self.imports.synced.wait(), self.slices.synced.wait()), limit
        )

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None
        await self.imports.stop()
        await self.slices.stop()
