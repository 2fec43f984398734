"""The all-in-one fleet: what `up` starts, in order, and how it stops.

The only place that knows all three components: the embedded clusters and their
simulated pods, the MCS controller, one clusterset DNS per member cluster (each on its
own loopback address, as each cluster would run its own), and the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

from clusterset_dns.app import DnsApp
from gateway.app import GatewayApp
from mcs_controller.access.errors import ApiError
from mcs_controller.access.loader import Fleet
from mcs_controller.access.resources import NAMESPACES
from mcs_controller.app import ControllerApp
from mcs_fleet.sim import FleetSimulator

log = logging.getLogger("mcs_fleet")


@dataclass
class Ports:
    controller_admin: int = 9090
    #: DNS port on each cluster's address (53 as in a cluster; 5353 when not root).
    dns: int = field(default_factory=lambda: 53 if os.geteuid() == 0 else 5353)
    dns_admin: int = 9153  # CoreDNS's metrics port
    gateway: int = 8080
    gateway_admin: int = 8082
    #: The gateway's HTTPS listener (self-signed default certificate unless an Ingress's
    #: spec.tls names one); None: plain HTTP only.
    gateway_tls: int | None = None


def dns_address(index: int) -> str:
    """Cluster i's DNS service address: 127.53.0.<i+1> (all of 127/8 reaches lo on Linux)."""
    return f"127.53.0.{index + 1}"


class AllInOne:
    def __init__(self, fleet: Fleet, ports: Ports | None = None, *, dns: bool = True,
                 gateway: bool = True):
        self.fleet = fleet
        self.ports = ports or Ports()
        self.sim = FleetSimulator(fleet)
        hub = fleet.clusters[fleet.hub] if fleet.hub else None
        self.controller = ControllerApp(
            fleet.member_clients(), hub, admin_host="127.0.0.1",
            admin_port=self.ports.controller_admin, lease=None,
        )
        self.dns: dict[str, DnsApp] = {}
        if dns:
            for i, name in enumerate(fleet.members):
                self.dns[name] = DnsApp(
                    fleet.clusters[name], listen=(dns_address(i), self.ports.dns),
                    admin=(dns_address(i), self.ports.dns_admin),
                )
        self.gateway = (
            GatewayApp(hub, fleet.member_clients(), listen=("127.0.0.1", self.ports.gateway),
                       admin=("127.0.0.1", self.ports.gateway_admin),
                       listen_tls=None if self.ports.gateway_tls is None
                       else ("127.0.0.1", self.ports.gateway_tls))
            if hub is not None and gateway else None
        )
        self._controller_task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.fleet.hub and await _has_namespace(self.fleet, self.fleet.hub, "amcs-system"):
            self.controller.lease = ("amcs-system", "mcs-controller")
        await self.sim.start()
        self._controller_task = asyncio.create_task(self.controller.run(), name="controller")
        for app in self.dns.values():
            await app.start()
        if self.gateway is not None:
            await self.gateway.start()

    async def settled(self, quiet: float = 0.5, limit: float = 30.0) -> None:
        """Until the controller synced, drained its queue and wrote nothing for `quiet`."""
        controller = self.controller.controller
        deadline = time.monotonic() + limit
        last, since = controller.writer.total, time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            busy = not controller.synced or len(controller.queue) or controller.queue.in_progress
            if busy or controller.writer.total != last:
                last, since = controller.writer.total, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        if self.gateway is not None:
            with contextlib.suppress(TimeoutError):
                await self.gateway.wait_ready(max(0.1, deadline - time.monotonic()))

    async def wait(self) -> None:
        """Until the controller stops (it runs until cancelled)."""
        if self._controller_task is not None:
            await asyncio.shield(self._controller_task)

    async def stop(self) -> None:
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                await self.gateway.stop(grace=1.0)
        for app in self.dns.values():
            with contextlib.suppress(Exception):
                await app.stop()
        if self._controller_task is not None:
            self._controller_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._controller_task
        await self.sim.stop()


async def _has_namespace(fleet: Fleet, cluster: str, ns: str) -> bool:
    try:
        await fleet.clusters[cluster].get(NAMESPACES, None, ns)
    except ApiError:
        return False
    return True
