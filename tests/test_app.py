"""The controller process: config file errors, two replicas behind one Lease."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from fleetkit import endpoint, eventually, source_slice

from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import (
    ENDPOINT_SLICES,
    NAMESPACES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
)
from mcs_controller.app import ControllerApp
from mcs_controller.config import ConfigError, load_config


def test_config_parses_the_documented_format(tmp_path: Path):
    path = tmp_path / "fleet.yaml"
    path.write_text("""
kubeconfig: /etc/amcs/kubeconfig
hub: {context: hub}
clusters:
  - {name: cluster1-beijing, context: c1}
  - {name: cluster2-beijing, context: c2}
leaderElection: {namespace: amcs-system, name: mcs-controller}
unreachableGracePeriod: 1m
""")
    cfg = load_config(path)
    assert [c.name for c in cfg.clusters] == ["cluster1-beijing", "cluster2-beijing"]
    assert cfg.hub is not None and cfg.hub.context == "hub"
    assert cfg.unreachable_grace_period == 60.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clusters: []", "clusters: required"),
        ("clusters: [{context: c1}]", "clusters[0].name: required"),
        ("clusters: [{name: a}, {name: a}]", "clusters[1].name: 'a' appears twice"),
        ("clusters: [{name: Bad_Name}]", "clusters[0].name: 'Bad_Name' is not a valid cluster id"),
        ("clusters: [{name: a}]\nunreachableGracePeriod: soon", "unreachableGracePeriod: 'soon'"),
        ("clusters: [{name: a}\n", "not valid YAML"),
        ("- just a list", "must be a mapping"),
    ],
)
def test_config_errors_name_file_and_field(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


async def test_two_replicas_one_leader_and_takeover():
    members = {}
    for name in ("c1", "c2"):
        c = EmbeddedCluster(name, service_cidr="10.20.0.0/16" if name == "c1" else "10.21.0.0/16")
        await c.create(NAMESPACES, {"metadata": {"name": "demo"}})
        members[name] = c
    hub = EmbeddedCluster("hub")
    await hub.create(NAMESPACES, {"metadata": {"name": "amcs-system"}})
    apps = [
        ControllerApp(members, hub, admin_host="127.0.0.1", admin_port=0, identity=f"replica-{i}")
        for i in range(2)
    ]
    for app in apps:
        app.controller.grace_period = 30.0
    tasks = [asyncio.create_task(app.run()) for app in apps]
    try:
        c1 = members["c1"]
        await c1.create(SERVICES, {"metadata": {"name": "web", "namespace": "demo"},
                                   "spec": {"ports": [{"port": 80}]}})
        await c1.create(ENDPOINT_SLICES, source_slice("web", "demo", [endpoint("10.1.0.1")]))
        await c1.create(SERVICE_EXPORTS, {"metadata": {"name": "web", "namespace": "demo"}})
        await eventually(lambda: members["c2"].get(SERVICE_IMPORTS, "demo", "web"))
        writers = [app for app in apps if app.controller.writer.total > 0]
        assert len(writers) == 1, "exactly one replica writes"
        leader = writers[0]
        standby = apps[1 - apps.index(leader)]
        # the leader goes away gracefully; the standby takes over and keeps reconciling
        tasks[apps.index(leader)].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[apps.index(leader)]
        await c1.delete(SERVICE_EXPORTS, "demo", "web")

        async def gone():
            return not (await members["c2"].list(SERVICE_IMPORTS, "demo")).items
        await eventually(gone, within=10.0)
        assert standby.controller.writer.total > 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
