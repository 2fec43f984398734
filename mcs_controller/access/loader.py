"""Load an embedded fleet from a folder: one sub-folder per cluster, ordinary Kubernetes YAML.

    <fleet>/fleet.yaml          optional: kind Fleet; hub; per-cluster serviceCIDR and member
    <fleet>/<cluster>/*.yaml    the cluster's objects (multi-document files allowed)

A malformed file or object is reported with its file, document and field; everything
else still loads.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mcs_controller.access.api import JSON
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.errors import ApiError
from mcs_controller.access.resources import NAMESPACES, Resource, by_api_version_kind

FLEET_FILE = "fleet.yaml"


@dataclass(frozen=True)
class LoadError:
    file: str
    message: str
    document: int | None = None  # 1-based index inside a multi-document file

    def __str__(self) -> str:
        where = f"{self.file} (document {self.document})" if self.document else self.file
        return f"{where}: {self.message}"


@dataclass
class Fleet:
    name: str
    clusters: dict[str, EmbeddedCluster] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    hub: str | None = None

    def member_clients(self) -> dict[str, EmbeddedCluster]:
        return {name: self.clusters[name] for name in self.members}


def resource_of(obj: JSON) -> Resource:
    """The resource an object belongs to; kinds we do not know are stored generically."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    known = by_api_version_kind(api_version, kind)
    if known:
        return known
    group, _, version = api_version.rpartition("/")
    namespaced = bool((obj.get("metadata") or {}).get("namespace"))
    return Resource(group, version, kind.lower() + "s", kind, namespaced=namespaced)


def _fleet_settings(root: Path, errors: list[LoadError]) -> dict:
    path = root / FLEET_FILE
    if not path.exists():
        return {}
    try:
        settings = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        errors.append(LoadError(str(path), f"not valid YAML: {exc}"))
        return {}
    if not isinstance(settings, dict):
        errors.append(LoadError(str(path), "must be a mapping"))
        return {}
    if not isinstance(settings.get("clusters", {}), dict):
        errors.append(LoadError(str(path), "clusters: must be a mapping of cluster name to settings"))
        settings["clusters"] = {}
    return settings


def _service_cidr(name: str, index: int, settings: dict, path: Path, errors: list[LoadError]) -> str:
    cidr = (settings.get("clusters", {}).get(name) or {}).get("serviceCIDR")
    default = f"10.{100 + index}.0.0/16"
    if cidr is None:
        return default
    try:
        ipaddress.ip_network(cidr)
    except ValueError:
        errors.append(LoadError(str(path), f"clusters.{name}.serviceCIDR: {cidr!r} is not a CIDR"))
        return default
    return cidr


def _documents(path: Path, errors: list[LoadError]) -> list[tuple[int, JSON]]:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as exc:
        errors.append(LoadError(str(path), f"not valid YAML: {exc}"))
        return []
    out = []
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        problem = _shape_problem(doc)
        if problem:
            errors.append(LoadError(str(path), problem, index))
            continue
        if doc["kind"].endswith("List") and isinstance(doc.get("items"), list):
            out.extend((index, item) for item in doc["items"] if not _shape_problem(item))
            continue
        out.append((index, doc))
    return out


def _shape_problem(doc: object) -> str | None:
    if not isinstance(doc, dict):
        return "not a Kubernetes object (expected a mapping)"
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            return f"{key}: required"
    if not isinstance(doc.get("metadata"), dict) or not doc["metadata"].get("name"):
        if doc["kind"].endswith("List"):
            return None
        return "metadata.name: required"
    return None


def read_folder(folder: Path, errors: list[LoadError]) -> list[tuple[Path, int, JSON]]:
    """Every object under `folder`, namespaces first (startup-time file reads)."""
    docs = [(p, i, d) for p in sorted(folder.rglob("*.y*ml")) for i, d in _documents(p, errors)]
    docs.sort(key=lambda item: 0 if item[2]["kind"] == "Namespace" else 1)
    return docs


async def load_cluster(cluster: EmbeddedCluster, folder: Path, errors: list[LoadError]) -> int:
    """Create every object under `folder` in `cluster`."""
    docs = read_folder(folder, errors)
    loaded = 0
    for path, index, doc in docs:
        res = resource_of(doc)
        try:
            if res.key == NAMESPACES.key:
                try:
                    await cluster.get(NAMESPACES, None, doc["metadata"]["name"])
                    continue  # default namespaces exist from the start
                except ApiError:
                    pass
            created = await cluster.create(res, doc)
            if doc.get("status") and "status" not in created:
                # What the kubelet or a controller would have written (pod IPs, readiness).
                created["status"] = doc["status"]
                await cluster.replace(res, created, subresource="status")
            loaded += 1
        except ApiError as exc:
            ref = f'{doc["kind"]} {doc["metadata"].get("namespace", "")}/{doc["metadata"]["name"]}'
            errors.append(LoadError(str(path), f"{ref.replace(' /', ' ')}: {exc.message}", index))
    return loaded


async def load_fleet(root: str | Path) -> tuple[Fleet, list[LoadError]]:
    """An embedded fleet from a folder; the errors name file, document and field."""
    root = Path(root)
    errors: list[LoadError] = []
    if not root.is_dir():
        return Fleet(name=root.name), [LoadError(str(root), "not a folder")]
    settings = _fleet_settings(root, errors)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    hub = settings.get("hub")
    if hub is not None and hub not in {p.name for p in folders}:
        errors.append(LoadError(str(root / FLEET_FILE), f"hub: no cluster folder named {hub!r}"))
        hub = None
    fleet = Fleet(name=settings.get("name") or root.name, hub=hub)
    for index, folder in enumerate(folders):
        name = folder.name
        cidr = _service_cidr(name, index, settings, root / FLEET_FILE, errors)
        cluster = EmbeddedCluster(name, service_cidr=cidr)
        fleet.clusters[name] = cluster
        member = (settings.get("clusters", {}).get(name) or {}).get("member", name != hub)
        if member:
            fleet.members.append(name)
        await load_cluster(cluster, folder, errors)
    return fleet, errors
