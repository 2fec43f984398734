"""`python -m mcs_controller` as a process, against Kubernetes API servers over real sockets."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import yaml
from fleetkit import endpoint, eventually, source_slice
from netkit import free_port

from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import (
    ENDPOINT_SLICES,
    LEASES,
    NAMESPACES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
)
from mcs_controller.access.served import serve_cluster
from mcs_controller.model import labels as L


def merged_kubeconfig(servers: dict[str, object]) -> dict:
    config = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}
    for name, server in servers.items():
        one = server.kubeconfig(name)
        for key in ("clusters", "users", "contexts"):
            config[key] += one[key]
    config["current-context"] = next(iter(servers))
    return config


async def test_controller_process_mirrors_exports_through_the_kubernetes_api(tmp_path: Path):
    stores = {name: EmbeddedCluster(name, service_cidr=cidr)
              for name, cidr in (("c1", "10.31.0.0/16"), ("c2", "10.32.0.0/16"), ("hub", "10.30.0.0/16"))}
    for name, store in stores.items():
        await store.create(NAMESPACES, {"metadata": {"name": "amcs-system" if name == "hub" else "demo"}})
    servers = {name: await serve_cluster(store, "127.0.0.1", 0, token=f"tok-{name}")
               for name, store in stores.items()}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(merged_kubeconfig(servers)))
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump({
        "kubeconfig": str(kubeconfig),
        "hub": {"context": "hub"},
        "clusters": [{"name": "c1", "context": "c1"}, {"name": "c2", "context": "c2"}],
        "leaderElection": {"namespace": "amcs-system", "name": "mcs-controller"},
        "unreachableGracePeriod": "30s",
    }))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcs_controller", "--config", str(config),
        "--admin-address", "127.0.0.1", "--admin-port", str(port), "--log-format", "json",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        c1, c2 = stores["c1"], stores["c2"]
        await c1.create(SERVICES, {"metadata": {"name": "web", "namespace": "demo"},
                                   "spec": {"ports": [{"name": "http", "port": 80}]}})
        await c1.create(ENDPOINT_SLICES, source_slice("web", "demo", [endpoint("10.1.0.1")]))
        await c1.create(SERVICE_EXPORTS, {"metadata": {"name": "web", "namespace": "demo"}})
        imp = await eventually(lambda: c2.get(SERVICE_IMPORTS, "demo", "web"), within=15.0)
        shadow = await c2.get(SERVICES, "demo", "amcs-web")
        assert imp["spec"]["ips"] == shadow["spec"]["clusterIPs"]
        slices = await eventually(lambda: _imported(c2), within=5.0)
        assert slices[0]["endpoints"][0]["addresses"] == ["10.1.0.1"]
        # the Lease is in the hub, held by the process
        lease = await stores["hub"].get(LEASES, "amcs-system", "mcs-controller")
        assert lease["spec"]["holderIdentity"]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
        assert 'mcs_controller_writes_total{cluster="c2",kind="ServiceImport",verb="create"} 1.0' in text
        assert "mcs_controller_is_leader 1.0" in text
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        for server in servers.values():
            await server.stop()
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(line.get("msg", "").startswith("created ServiceImport") and line.get("cluster") == "c2"
               for line in lines)


async def _imported(cluster: EmbeddedCluster) -> list[dict]:
    return (await cluster.list(ENDPOINT_SLICES, "demo", f"{L.LABEL_MCS_SERVICE_NAME}=web")).items
