"""Cluster access to a real Kubernetes API server (kubeconfig or in-cluster), over aiohttp."""

from mcs_controller.access.kube.client import KubeCluster, resource_path
from mcs_controller.access.kube.config import (
    KubeConfigError,
    KubeConnection,
    load_incluster,
    load_kubeconfig,
)

__all__ = [
    "KubeCluster",
    "KubeConfigError",
    "KubeConnection",
    "load_incluster",
    "load_kubeconfig",
    "resource_path",
]
