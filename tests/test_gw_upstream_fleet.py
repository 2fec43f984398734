"""The upstream part against the simulated fleet: slices written by the EndpointSlice
simulator, pods answering HTTP on 127.91.9.x, health checks detecting a dead cluster and
priority pools failing over to the backup region and back."""

from __future__ import annotations

from collections import Counter

import aiohttp
from fleetkit import eventually

from gateway.types import CLUSTER_LABEL, BackendPolicy, BackendRef, HealthCheckPolicy, RequestView
from gateway.upstream.manager import UpstreamManager
from mcs_controller.access.loader import load_fleet
from mcs_fleet.sim import FleetSimulator

PORT = 18092
REQ = RequestView("GET", "/", "web.example", {}, "192.0.2.1")
PODS = {"c1": ["127.91.9.1", "127.91.9.2"], "c2": ["127.91.9.3"], "c3": ["127.91.9.4"]}

FLEET = """
apiVersion: amcs.dev/v1alpha1
kind: Fleet
clusters:
  c1: {serviceCIDR: 10.81.0.0/16}
  c2: {serviceCIDR: 10.82.0.0/16}
  c3: {serviceCIDR: 10.83.0.0/16}
"""

SERVICE = """
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""

POD = """
---
apiVersion: v1
kind: Pod
metadata:
  name: web-{i}
  namespace: demo
  labels: {{app: web, track: {track}}}
spec:
  containers:
    - name: web
      image: hashicorp/http-echo:1.0
      ports: [{{name: http, containerPort: {port}}}]
status:
  phase: Running
  podIP: {ip}
  conditions: [{{type: Ready, status: "True"}}]
"""


async def get(ip: str, port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://{ip}:{port}/", timeout=aiohttp.ClientTimeout(total=2)) as r:
        return await r.text()


async def test_fleet_union_health_checks_and_priority_failover(tmp_path):
    (tmp_path / "fleet.yaml").write_text(FLEET)
    for cluster, ips in PODS.items():
        (tmp_path / cluster).mkdir()
        docs = SERVICE + "".join(
            POD.format(i=i, ip=ip, port=PORT, track="canary" if cluster == "c2" else "stable")
            for i, ip in enumerate(ips))
        (tmp_path / cluster / "web.yaml").write_text(docs)
    fleet, errors = await load_fleet(tmp_path)
    assert errors == []
    sim = FleetSimulator(fleet)
    await sim.start()
    mgr = UpstreamManager(fleet.member_clients())
    web = BackendRef("demo", "web", "http")
    canary = BackendRef("demo", "web", 80, subset=(("track", "canary"),))
    hc = HealthCheckPolicy(path="/healthz", interval=0.05, timeout=0.5, unhealthy_threshold=2)
    policy = BackendPolicy(priority_pools=(("c1", "c2"), ("c3",)), health_check=hc)
    try:
        assert await mgr.start(within=5.0)
        mgr.sync({web: policy, canary: BackendPolicy()})
        # The union of both primary clusters, by pod count; the backup idle.
        picks = Counter(mgr.pick(web, REQ).cluster for _ in range(300))
        assert picks == {"c1": 200, "c2": 100}
        ep = mgr.pick(canary, REQ)
        assert ep.cluster == "c2" and ep.labels[CLUSTER_LABEL] == "c2" and ep.labels["track"] == "canary"
        assert await get(ep.ip, ep.port) == "This is env c2 !\n"
        await eventually(lambda: all(d["healthy"] for d in mgr.describe(web)), within=2.0)
        # Both primary clusters' pods die (API objects untouched): health checks notice,
        # the backup pool takes over.
        await sim.stop_cluster("c1")
        await sim.stop_cluster("c2")
        await eventually(lambda: {mgr.pick(web, REQ).cluster for _ in range(10)} == {"c3"}, within=2.0)
        ep = mgr.pick(web, REQ)
        assert await get(ep.ip, ep.port) == "This is env c3 !\n"
        assert mgr.summary(web)["priority_load"] == [0, 100]
        # One primary cluster back: traffic returns to it.
        await sim.start_cluster("c2")
        await eventually(lambda: {mgr.pick(web, REQ).cluster for _ in range(10)} == {"c2"}, within=2.0)
    finally:
        await mgr.stop()
        await sim.stop()
