"""Cluster access: one async interface over JSON objects, embedded or real Kubernetes."""

from mcs_controller.access.api import ClusterClient, ObjectList, WatchEvent
from mcs_controller.access.errors import (
    AlreadyExists,
    ApiError,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    Unreachable,
)
from mcs_controller.access.resources import Resource

__all__ = [
    "AlreadyExists",
    "ApiError",
    "ClusterClient",
    "Conflict",
    "Gone",
    "Invalid",
    "NotFound",
    "ObjectList",
    "Resource",
    "Unreachable",
    "WatchEvent",
]
