"""Clients for the clusters a config file names: kubeconfig contexts, or in-cluster config."""

from __future__ import annotations

from mcs_controller.access.kube import KubeCluster, load_incluster, load_kubeconfig
from mcs_controller.config import ClusterRef, ControllerConfig


def connect(cfg: ControllerConfig, ref: ClusterRef) -> KubeCluster:
    if ref.context is None and cfg.kubeconfig is None:
        return KubeCluster(ref.name, load_incluster())
    return KubeCluster(ref.name, load_kubeconfig(cfg.kubeconfig, ref.context))


def connect_all(cfg: ControllerConfig) -> tuple[dict[str, KubeCluster], KubeCluster | None]:
    """(member clients by cluster name, hub client or None); raises KubeConfigError."""
    members = {ref.name: connect(cfg, ref) for ref in cfg.clusters}
    hub = connect(cfg, cfg.hub) if cfg.hub is not None else None
    return members, hub
