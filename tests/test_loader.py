"""Fleet folders load; bad files and objects are reported with file, document and field."""

from __future__ import annotations

from pathlib import Path

from mcs_controller.access.loader import load_fleet
from mcs_controller.access.resources import NAMESPACES, PODS, SERVICES


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def test_fleet_loads_clusters_and_reports_bad_input(tmp_path: Path):
    write(tmp_path / "fleet.yaml", "kind: Fleet\nhub: hub\nclusters:\n  c1: {serviceCIDR: 10.9.0.0/24}\n")
    write(tmp_path / "hub" / "empty.yaml", "")
    write(tmp_path / "c1" / "app.yaml", """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: web, image: x}]}
status: {podIP: 127.1.0.10, phase: Running}
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: shop}
spec: {ports: [{name: http}]}
---
kind: Service
metadata: {name: nokind}
""")
    write(tmp_path / "c1" / "bad.yaml", "apiVersion: v1\nkind: [unclosed\n")
    write(tmp_path / "c2" / "ok.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")

    fleet, errors = await load_fleet(tmp_path)

    assert fleet.hub == "hub" and fleet.members == ["c1", "c2"]
    c1 = fleet.clusters["c1"]
    web = await c1.get(SERVICES, "shop", "web")
    assert web["spec"]["clusterIP"].startswith("10.9.0.")
    pod = await c1.get(PODS, "shop", "web-1")
    assert pod["status"]["podIP"] == "127.1.0.10"
    assert (await fleet.clusters["c2"].get(NAMESPACES, None, "shop"))["status"]["phase"] == "Active"
    text = sorted(str(e) for e in errors)
    assert len(text) == 3, text
    assert any("app.yaml (document 4)" in t and "spec.ports[0].port: required" in t for t in text)
    assert any("app.yaml (document 5)" in t and "apiVersion: required" in t for t in text)
    assert any("bad.yaml" in t and "not valid YAML" in t for t in text)


async def test_missing_folder_and_unknown_hub(tmp_path: Path):
    _, errors = await load_fleet(tmp_path / "nope")
    assert "not a folder" in str(errors[0])
    write(tmp_path / "fleet.yaml", "hub: ghost\n")
    (tmp_path / "c1").mkdir()
    fleet, errors = await load_fleet(tmp_path)
    assert fleet.hub is None and fleet.members == ["c1"]
    assert "hub: no cluster folder named 'ghost'" in str(errors[0])
