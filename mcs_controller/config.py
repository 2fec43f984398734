"""The controller's configuration file (format documented in manifests/README.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

_DNS_LABELISH = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(ValueError):
    """A bad configuration file; the message names the file and the field."""


@dataclass
class ClusterRef:
    name: str
    context: str | None = None  # None: in-cluster config


@dataclass
class ControllerConfig:
    kubeconfig: str | None = None
    hub: ClusterRef | None = None
    clusters: list[ClusterRef] = field(default_factory=list)
    lease_namespace: str = "amcs-system"
    lease_name: str = "mcs-controller"
    unreachable_grace_period: float = 30.0


def parse_duration(value: object, where: str) -> float:
    """`30s`, `500ms`, `2m`, or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(f"{where}: {value!r} is not a duration (e.g. 30s, 500ms, 2m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def load_config(path: str | Path) -> ControllerConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(raw, str(path))


def parse_config(raw: object, where: str) -> ControllerConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping")
    cfg = ControllerConfig(kubeconfig=raw.get("kubeconfig"))
    hub = raw.get("hub")
    if hub is not None:
        if not isinstance(hub, dict):
            raise ConfigError(f"{where}: hub: must be a mapping like {{context: hub}}")
        cfg.hub = ClusterRef(name=hub.get("name", "hub"), context=hub.get("context"))
    clusters = raw.get("clusters")
    if not isinstance(clusters, list) or not clusters:
        raise ConfigError(f"{where}: clusters: required, a list of {{name, context}}")
    seen: set[str] = set()
    for i, item in enumerate(clusters):
        if not isinstance(item, dict) or not item.get("name"):
            raise ConfigError(f"{where}: clusters[{i}].name: required")
        name = str(item["name"])
        if not _DNS_LABELISH.match(name) or len(name) > 128:
            raise ConfigError(f"{where}: clusters[{i}].name: {name!r} is not a valid cluster id")
        if name in seen:
            raise ConfigError(f"{where}: clusters[{i}].name: {name!r} appears twice")
        seen.add(name)
        cfg.clusters.append(ClusterRef(name=name, context=item.get("context")))
    election = raw.get("leaderElection") or {}
    if not isinstance(election, dict):
        raise ConfigError(f"{where}: leaderElection: must be a mapping")
    cfg.lease_namespace = election.get("namespace", cfg.lease_namespace)
    cfg.lease_name = election.get("name", cfg.lease_name)
    if "unreachableGracePeriod" in raw:
        cfg.unreachable_grace_period = parse_duration(
            raw["unreachableGracePeriod"], f"{where}: unreachableGracePeriod"
        )
    return cfg
