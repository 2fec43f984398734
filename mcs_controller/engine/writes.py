"""Compare, then write: every write the controller makes goes through here (and is counted)."""

from __future__ import annotations

import logging
from collections import Counter

from mcs_controller.access.api import JSON
from mcs_controller.access.errors import AlreadyExists, NotFound
from mcs_controller.access.resources import ENDPOINT_SLICES, Resource
from mcs_controller.engine.members import MemberCluster
from mcs_controller.model import labels as L
from mcs_controller.model.slices import content_digest

log = logging.getLogger("mcs_controller.writes")

#: The EndpointSlice fields we own; anything else on a slice is left as the server has it.
_SLICE_FIELDS = ("addressType", "ports", "endpoints")


class Writer:
    def __init__(self, metrics: object | None = None):
        self.metrics = metrics
        #: (cluster, kind, verb) -> count; what tests and `up` read to see what was written.
        self.counts: Counter[tuple[str, str, str]] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _count(self, m: MemberCluster, res: Resource, verb: str, result: JSON | None) -> None:
        informer = m.informer_for(res)
        if informer is not None and result is not None:
            if verb == "delete":
                informer.forget_object(result)
            else:
                informer.remember(result)
        self.counts[(m.name, res.kind, verb)] += 1
        if self.metrics is not None:
            self.metrics.count_write(m.name, res.kind, verb)

    async def create(self, m: MemberCluster, res: Resource, obj: JSON) -> JSON | None:
        """Create; None when it already exists (our informer has not caught up yet)."""
        try:
            created = await m.client.create(res, obj)
        except AlreadyExists:
            log.debug("%s %s already exists", res.kind, obj["metadata"]["name"], extra={"cluster": m.name})
            return None
        self._count(m, res, "create", created)
        log.info("created %s %s/%s", res.kind, obj["metadata"].get("namespace", ""),
                 obj["metadata"]["name"], extra={"cluster": m.name})
        return created

    async def replace(self, m: MemberCluster, res: Resource, obj: JSON) -> JSON:
        """PUT with the observed resourceVersion: a stale cache gives Conflict, and a retry."""
        written = await m.client.replace(res, obj)
        self._count(m, res, "update", written)
        return written

    async def patch_status(self, m: MemberCluster, res: Resource, obj: JSON, status: JSON) -> JSON:
        meta = obj["metadata"]
        written = await m.client.patch(
            res, meta.get("namespace"), meta["name"],
            {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status},
            subresource="status",
        )
        self._count(m, res, "patch", written)
        return written

    async def delete(self, m: MemberCluster, res: Resource, obj: JSON) -> None:
        if not L.is_ours(obj):  # the one rule that must never break
            raise RuntimeError(f"refusing to delete {res.kind} {obj['metadata']['name']}: not ours")
        meta = obj["metadata"]
        try:
            await m.client.delete(res, meta.get("namespace"), meta["name"])
        except NotFound:
            return
        self._count(m, res, "delete", obj)
        log.info("deleted %s %s/%s", res.kind, meta.get("namespace", ""), meta["name"],
                 extra={"cluster": m.name})

    async def patch(self, m: MemberCluster, res: Resource, obj: JSON, patch: JSON) -> JSON:
        """Merge patch guarded by the observed resourceVersion (stale cache -> Conflict)."""
        meta = obj["metadata"]
        body = {**patch, "metadata": {**patch.get("metadata", {}),
                                      "resourceVersion": meta["resourceVersion"]}}
        written = await m.client.patch(res, meta.get("namespace"), meta["name"], body)
        self._count(m, res, "patch", written)
        return written

    async def sync_slices(
        self, m: MemberCluster, desired: list[JSON], observed: list[JSON], owners: list[JSON]
    ) -> None:
        """Make our slices in `m` exactly `desired` (by name): create, update, delete.

        Compare first; objects are built only for the writes that are needed.
        """
        have = {o["metadata"]["name"]: o for o in observed}
        for want in desired:
            current = have.pop(want["metadata"]["name"], None)
            if current is None:
                meta = {**want["metadata"], "ownerReferences": owners} if owners else want["metadata"]
                await self.create(m, ENDPOINT_SLICES, {**want, "metadata": meta})
            elif not same_slice(current, want, owners):
                await self.patch(m, ENDPOINT_SLICES, current, {
                    "metadata": {"labels": _replace_map(current, want["metadata"]["labels"]),
                                 "ownerReferences": owners or None},
                    "ports": want.get("ports") or [],
                    "endpoints": want.get("endpoints") or [],
                })
        for extra in have.values():
            await self.delete(m, ENDPOINT_SLICES, extra)


def _replace_map(current: JSON, labels: dict[str, str]) -> dict[str, str | None]:
    """A merge patch that makes the labels exactly `labels` (null removes a key)."""
    patch: dict[str, str | None] = dict(labels)
    for key in current["metadata"].get("labels") or {}:
        if key not in labels:
            patch[key] = None
    return patch


def same_slice(current: JSON, want: JSON, owners: list[JSON]) -> bool:
    """Does the observed slice (full, or trimmed to a digest) already hold `want`?"""
    if "contentDigest" in current:
        if current["contentDigest"] != content_digest(want):
            return False
    elif any((current.get(k) or []) != (want.get(k) or []) for k in _SLICE_FIELDS):
        return False
    cm = current["metadata"]
    return (cm.get("labels") or {}) == want["metadata"]["labels"] and (
        (cm.get("ownerReferences") or []) == owners
    )


def owner_reference(obj: JSON) -> JSON:
    """A non-controller owner reference (KEP example: slices -> ServiceImport)."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": False,
        "blockOwnerDeletion": False,
    }
