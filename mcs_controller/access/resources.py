"""The API resources we read and write, named once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """One Kubernetes resource type: enough to build its URL and its apiVersion."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """Identity across versions: one stored object, served under every version."""
        return (self.group, self.plural)

    def at_version(self, version: str) -> Resource:
        return Resource(self.group, version, self.plural, self.kind, self.namespaced)

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
SERVICES = Resource("", "v1", "services", "Service")
PODS = Resource("", "v1", "pods", "Pod")
EVENTS = Resource("", "v1", "events", "Event")
SECRETS = Resource("", "v1", "secrets", "Secret")  # the gateway's TLS certificates
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap")  # the gateway's auth-proxy-set-headers
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
INGRESSES = Resource("networking.k8s.io", "v1", "ingresses", "Ingress")
INGRESS_CLASSES = Resource("networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False)

MCS_GROUP = "multicluster.x-k8s.io"
SERVICE_EXPORTS = Resource(MCS_GROUP, "v1alpha1", "serviceexports", "ServiceExport")
SERVICE_IMPORTS = Resource(MCS_GROUP, "v1alpha1", "serviceimports", "ServiceImport")
CLUSTER_PROPERTIES = Resource(
    "about.k8s.io", "v1alpha1", "clusterproperties", "ClusterProperty", namespaced=False
)
MULTI_CLUSTER_SERVICES = Resource(
    "networking.one.alibabacloud.com", "v1alpha1", "multiclusterservices", "MultiClusterService"
)

#: Versions served for one stored resource (the MCS CRDs serve both, schemas identical).
SERVED_VERSIONS: dict[tuple[str, str], tuple[str, ...]] = {
    SERVICE_EXPORTS.key: ("v1alpha1", "v1beta1"),
    SERVICE_IMPORTS.key: ("v1alpha1", "v1beta1"),
    CLUSTER_PROPERTIES.key: ("v1alpha1", "v1beta1"),
}

ALL = (
    NAMESPACES,
    SERVICES,
    PODS,
    EVENTS,
    SECRETS,
    CONFIG_MAPS,
    ENDPOINT_SLICES,
    LEASES,
    INGRESSES,
    INGRESS_CLASSES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    CLUSTER_PROPERTIES,
    MULTI_CLUSTER_SERVICES,
)


def by_api_version_kind(api_version: str, kind: str) -> Resource | None:
    """The resource an object's apiVersion+kind names, at that version, or None if unknown."""
    group, _, version = api_version.rpartition("/")
    for res in ALL:
        if res.group == group and res.kind == kind:
            if version == res.version or version in SERVED_VERSIONS.get(res.key, ()):
                return res.at_version(version)
    return None
