"""The one async interface every component uses to reach a cluster.

Objects are plain JSON dicts, exactly as the Kubernetes API sends them. Two
implementations: `embedded.EmbeddedCluster` (in-process) and `kube.KubeCluster`
(a real API server). Both raise the typed errors of `errors`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from mcs_controller.access.resources import Resource

JSON = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
PatchType = Literal["merge", "json"]


@dataclass
class WatchEvent:
    type: EventType
    object: JSON


@dataclass
class ObjectList:
    items: list[JSON]
    resource_version: str
    #: Objects are the list's items, with apiVersion and kind filled in.
    extra: JSON = field(default_factory=dict)


class ClusterClient(abc.ABC):
    """list / watch / get / create / replace / patch / delete on one cluster."""

    #: The configured cluster name (its identity unless a ClusterProperty says otherwise).
    name: str

    @abc.abstractmethod
    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> ObjectList: ...

    @abc.abstractmethod
    def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: float | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Events after `resource_version`; raises `Gone` when that is too old.

        BOOKMARK events carry only metadata.resourceVersion. The stream ends when
        the server closes it (or `timeout_seconds` passes); the caller re-watches.
        """

    @abc.abstractmethod
    async def get(self, res: Resource, namespace: str | None, name: str) -> JSON: ...

    @abc.abstractmethod
    async def create(self, res: Resource, obj: JSON) -> JSON: ...

    @abc.abstractmethod
    async def replace(self, res: Resource, obj: JSON, subresource: str | None = None) -> JSON:
        """PUT; `Conflict` when obj's metadata.resourceVersion is stale."""

    @abc.abstractmethod
    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
    ) -> JSON: ...

    @abc.abstractmethod
    async def delete(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        resource_version: str | None = None,
    ) -> None:
        """Delete; with `resource_version`, only if unchanged (else `Conflict`)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
