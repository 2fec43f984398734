"""Label, annotation and name conventions (DESIGN.md section 2), named once."""

from __future__ import annotations

#: Our controller's name, as EndpointSlice `managed-by` (never the built-in controller's).
CONTROLLER_NAME = "mcs-controller.amcs.dev"
#: The built-in EndpointSlice controller: its slices are the source of truth we mirror.
BUILTIN_SLICE_CONTROLLER = "endpointslice-controller.k8s.io"

# Upstream labels.
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_MCS_SERVICE_NAME = "multicluster.kubernetes.io/service-name"
LABEL_SOURCE_CLUSTER = "multicluster.kubernetes.io/source-cluster"

# Our own labels: everything the controller creates carries LABEL_OWNED_BY.
LABEL_OWNED_BY = "amcs.dev/managed-by"
OWNED_BY_VALUE = "mcs-controller"
#: Which mechanism made an object: "serviceexport" or "multiclusterservice".
LABEL_ORIGIN = "amcs.dev/origin"
ORIGIN_EXPORT = "serviceexport"
ORIGIN_MCS = "multiclusterservice"
#: On MultiClusterService slices: the MultiClusterService's name (its namespace is the slice's).
LABEL_MCS_OBJECT = "amcs.dev/multiclusterservice"

SHADOW_PREFIX = "amcs-"
#: Most endpoints per EndpointSlice (the built-in controller's default too).
MAX_ENDPOINTS_PER_SLICE = 100

#: The About API property naming a cluster (KEP-2149), and its legacy name.
CLUSTER_ID_PROPERTY = "cluster.clusterset.k8s.io"
LEGACY_CLUSTER_ID_PROPERTY = "id.k8s.io"


def shadow_service_name(service: str) -> str:
    return SHADOW_PREFIX + service


def is_ours(obj: dict) -> bool:
    """True only for objects this controller created (the only ones it may change)."""
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels.get(LABEL_OWNED_BY) == OWNED_BY_VALUE
