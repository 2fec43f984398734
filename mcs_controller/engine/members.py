"""One member cluster as the controller sees it: its client, informers, identity and health."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from mcs_controller.access.api import JSON, ClusterClient
from mcs_controller.access.errors import ApiError
from mcs_controller.access.informer import Informer
from mcs_controller.access.resources import (
    CLUSTER_PROPERTIES,
    ENDPOINT_SLICES,
    NAMESPACES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
    Resource,
)
from mcs_controller.model import labels as L
from mcs_controller.model.slices import trim_slice

log = logging.getLogger("mcs_controller.members")

#: Index of EndpointSlices by `<namespace>/<kubernetes.io/service-name>`.
BY_SERVICE = "by-service"
#: Index of our own objects by `<namespace>/<the Service name they serve>`.
BY_KEY = "by-key"


def _ns_name(obj: JSON, name: str | None) -> list[str]:
    return [f"{obj['metadata'].get('namespace', '')}/{name}"] if name else []


def service_key_of_ours(obj: JSON) -> str | None:
    """The Service name one of our objects serves (import, shadow Service, slice)."""
    labels = obj["metadata"].get("labels") or {}
    if not L.is_ours(obj):
        return None
    return labels.get(L.LABEL_MCS_SERVICE_NAME) or labels.get(L.LABEL_MCS_OBJECT)


class MemberCluster:
    def __init__(self, name: str, client: ClusterClient):
        self.name = name
        self.client = client
        #: The cluster id used in labels and status: ClusterProperty if present, else `name`.
        self.cluster_id = name
        self.namespaces = Informer(client, NAMESPACES)
        self.services = Informer(client, SERVICES)
        self.slices = Informer(client, ENDPOINT_SLICES, transform=trim_slice)
        self.exports = Informer(client, SERVICE_EXPORTS)
        self.imports = Informer(client, SERVICE_IMPORTS)
        self.slices.add_index(
            BY_SERVICE, lambda o: _ns_name(o, (o["metadata"].get("labels") or {}).get(L.LABEL_SERVICE_NAME))
        )
        for informer in (self.slices, self.services, self.imports):
            informer.add_index(BY_KEY, lambda o: _ns_name(o, service_key_of_ours(o)))

    @property
    def informers(self) -> tuple[Informer, ...]:
        return (self.namespaces, self.services, self.slices, self.exports, self.imports)

    def informer_for(self, res: Resource) -> Informer | None:
        """The informer caching `res`, so our own writes can be remembered in it."""
        for informer in self.informers:
            if informer.resource.key == res.key:
                return informer
        return None

    async def discover_identity(self) -> None:
        """Read the About API cluster id (KEP-2149), falling back to the configured name."""
        for prop in (L.CLUSTER_ID_PROPERTY, L.LEGACY_CLUSTER_ID_PROPERTY):
            try:
                obj = await self.client.get(CLUSTER_PROPERTIES, None, prop)
            except ApiError:
                continue
            value = (obj.get("spec") or {}).get("value")
            if value:
                self.cluster_id = value
                return

    def start(self, on_event: Callable[[MemberCluster, str, JSON], None]) -> None:
        for informer in self.informers:
            informer.add_handler(
                lambda kind, obj, old, _i=informer: on_event(self, _i.resource.plural, obj)
            )
            informer.start()

    async def stop(self) -> None:
        for informer in self.informers:
            await informer.stop()

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    @property
    def reachable(self) -> bool:
        return all(i.reachable for i in self.informers)

    def unreachable_for(self, now: float | None = None) -> float:
        """Seconds since the cluster was last seen reachable (0 while it is)."""
        since = [i.unreachable_since for i in self.informers if i.unreachable_since is not None]
        if not since:
            return 0.0
        return (now if now is not None else time.monotonic()) - min(since)

    def source_slices(self, namespace: str, name: str) -> list[JSON]:
        """The Service's own slices: labelled with its name and not written by us."""
        return [
            s for s in self.slices.by_index(BY_SERVICE, f"{namespace}/{name}")
            if (s["metadata"].get("labels") or {}).get(L.LABEL_MANAGED_BY) != L.CONTROLLER_NAME
            and not L.is_ours(s)
        ]

    def ours(self, informer: Informer, namespace: str, name: str, origin: str) -> list[JSON]:
        return [
            o for o in informer.by_index(BY_KEY, f"{namespace}/{name}")
            if (o["metadata"].get("labels") or {}).get(L.LABEL_ORIGIN) == origin
        ]

    def keys(self) -> Iterable[tuple[str, str]]:
        """Every Service name this cluster exports or holds something of ours for."""
        for export in self.exports.items():
            yield export["metadata"]["namespace"], export["metadata"]["name"]
        for informer in (self.imports, self.services, self.slices):
            for obj in informer.items():
                name = service_key_of_ours(obj)
                if name:
                    yield obj["metadata"]["namespace"], name
