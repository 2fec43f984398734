"""One DNS server instance: informers -> catalog -> responder -> UDP/TCP, plus admin HTTP.

The composition root for `python -m clusterset_dns` and for the all-in-one `up`
(one `DnsApp` per member cluster, each on its own loopback address).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from prometheus_client import CollectorRegistry

from clusterset_dns.catalog import Catalog, ServiceKey
from clusterset_dns.metrics import DnsMetrics
from clusterset_dns.responder import Responder
from clusterset_dns.server import DnsServer
from clusterset_dns.source import CatalogSource
from clusterset_dns.zone import Zone
from mcs_controller.access.api import ClusterClient
from mcs_controller.ops.admin import AdminServer
from mcs_controller.ops.metrics import new_registry

log = logging.getLogger("clusterset_dns")


def glue_addresses(host: str) -> tuple[str, ...]:
    """The apex NS glue: our listen address when it is a specific unicast one, else none."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return ()
    return () if ip.is_unspecified or ip.is_multicast else (str(ip),)


class DnsApp:
    """The clusterset.local server for one cluster's ServiceImports and imported slices."""

    def __init__(
        self,
        client: ClusterClient,
        *,
        listen: tuple[str, int] = ("0.0.0.0", 53),
        zone: str = "clusterset.local",
        ttl: int = 5,
        ack_names: bool = True,
        admin: tuple[str, int] | None = ("0.0.0.0", 8081),
        registry: CollectorRegistry | None = None,
        idle_timeout: float = 30.0,
        max_connections: int = 1024,
        udp_batch: bool = True,
    ) -> None:
        self.client = client
        self.registry = registry if registry is not None else new_registry()
        self.catalog = Catalog()
        self.zone = Zone(zone, ttl, ack_names=ack_names, ns_addresses=glue_addresses(listen[0]))
        self.responder = Responder(self.zone, self.catalog)
        self.metrics = DnsMetrics(self.registry, self.responder)
        self.server = DnsServer(
            self.responder, listen[0], listen[1],
            observe=self.metrics.udp_latency.observe, observe_tcp=self.metrics.tcp_latency.observe,
            idle_timeout=idle_timeout, max_connections=max_connections, udp_batch=udp_batch,
        )
        self.metrics.tcp_connections.set_function(lambda: len(self.server.connections))
        self.metrics.internal_errors.set_function(lambda: self.server.errors.count)
        self.metrics.catalog_services.set_function(lambda: self.catalog.service_count)
        self.metrics.catalog_endpoints.set_function(lambda: self.catalog.endpoint_count)
        self.source = CatalogSource(client, self.catalog, self._changed, on_synced=self._synced)
        self.admin = (
            AdminServer(admin[0], admin[1], self.registry, ready=self._ready, healthy=self._healthy)
            if admin is not None else None
        )
        self._started = False
        self._ready_event = asyncio.Event()
        self.draining = False  # (see `drain`)

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        """True once the catalog's first full sync is done (before: SERVFAIL in the zone)."""
        return self.responder.synced

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port) of both listeners."""
        if self.server.address is None:
            raise RuntimeError("DnsApp not started")
        return self.server.address

    @property
    def admin_port(self) -> int | None:
        return self.admin.bound_port if self.admin is not None else None

    def _ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting down"
        return (True, "ok") if self.ready else (False, "catalog not synced")

    def drain(self) -> None:
        """The start of a graceful stop (CoreDNS's lameduck): /readyz fails, so the Service
        stops sending queries here, while both listeners still answer the ones that come."""
        self.draining = True

    def _healthy(self) -> tuple[bool, str]:
        return (True, "ok") if self.server.address is not None else (False, "not listening")

    def _changed(self, keys: set[ServiceKey]) -> None:
        self.responder.invalidate(keys)
        self.metrics.serial.set(self.catalog.serial)

    def _synced(self) -> None:
        self.responder.set_synced()
        self.metrics.synced.set(1)
        self.metrics.serial.set(self.catalog.serial)
        self._ready_event.set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen (admin first, so probes answer), then start the informers; does not wait
        for the first sync (`ready` tells; queries get SERVFAIL until then)."""
        if self._started:
            raise RuntimeError("DnsApp already started")
        self._started = True
        try:
            if self.admin is not None:
                await self.admin.start()
            host, port = await self.server.start()
            await self.source.start()
        except BaseException:
            await self.stop()
            raise
        log.info("listening", extra={"host": host, "port": port, "zone": ".".join(self.zone.origin),
                                     "cluster": self.client.name})

    async def wait_ready(self, limit: float | None = None) -> None:
        """Until `ready` (TimeoutError after `limit` seconds)."""
        await asyncio.wait_for(self._ready_event.wait(), limit)

    async def stop(self) -> None:
        """Stop answering, then stop watching; safe to call twice."""
        await self.server.stop()
        await self.source.stop()
        if self.admin is not None:
            await self.admin.stop()
