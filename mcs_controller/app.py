"""The controller process: informers always, workers only while leading, an admin port."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

from mcs_controller.access.api import ClusterClient
from mcs_controller.engine.controller import Controller
from mcs_controller.engine.leader import LeaderElector, default_identity
from mcs_controller.ops.admin import AdminServer
from mcs_controller.ops.metrics import ControllerMetrics, new_registry

log = logging.getLogger("mcs_controller")


class ControllerApp:
    def __init__(
        self,
        members: dict[str, ClusterClient],
        hub: ClusterClient | None,
        *,
        admin_host: str = "0.0.0.0",
        admin_port: int = 8080,
        lease: tuple[str, str] | None = ("amcs-system", "mcs-controller"),
        identity: str | None = None,
        grace_period: float = 30.0,
        registry=None,
    ):
        self.registry = registry if registry is not None else new_registry()
        self.metrics = ControllerMetrics(self.registry)
        self.controller = Controller(members, hub, metrics=self.metrics, grace_period=grace_period)
        self.hub = hub
        self.lease = lease if hub is not None else None
        self.identity = identity or default_identity()
        self.admin = AdminServer(admin_host, admin_port, self.registry, ready=self.ready)

    def ready(self) -> tuple[bool, str]:
        if not self.controller.synced:
            return False, "informers not synced"
        return True, "ok"

    async def _freeze_after_sync(self) -> None:
        """Move the synced caches out of the collector's way: full collections over a large
        fleet's objects paused the loop for hundreds of ms (bench/controller.py)."""
        await self.controller.wait_synced()
        gc.collect()
        gc.freeze()

    async def run(self) -> None:
        port = await self.admin.start()
        log.info("admin listening", extra={"port": port})
        await self.controller.start_informers()
        freeze = asyncio.create_task(self._freeze_after_sync())
        try:
            if self.lease is None:
                self.metrics.set_leader(True)
                await self.controller.run_workers()
            else:
                elector = LeaderElector(
                    self.hub, self.lease[0], self.lease[1], self.identity,
                    on_started_leading=self.controller.run_workers,
                    metrics=self.metrics,
                )
                await elector.run()
        finally:
            freeze.cancel()
            with contextlib.suppress(Exception):
                await self.controller.stop()
            await self.admin.stop()

