"""The fleet simulator: the built-in EndpointSlice controller and HTTP-serving simulated pods.

Pod IPs live in 127.77.0.0/16 (one third octet per test), so nothing else's loopback
addresses collide with them; every server is stopped at the end of its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from fleetkit import eventually

from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.errors import NotFound
from mcs_controller.access.loader import load_fleet
from mcs_controller.access.resources import ENDPOINT_SLICES, NAMESPACES, PODS, SERVICES
from mcs_controller.engine.controller import Controller
from mcs_controller.model import labels as L
from mcs_fleet.pods import PodSimulator
from mcs_fleet.sim import LABEL_HEADLESS, EndpointSliceSimulator, FleetSimulator

EXAMPLES = Path(__file__).resolve().parent.parent / "manifests" / "examples"
PORT = 18080


def pod(name: str, ip: str | None, *, app: str = "web", ready: bool = True, ns: str = "demo",
        ports=None, text: str | None = None, **spec) -> dict:
    body = {
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "hashicorp/http-echo:1.0",
                                 "ports": ports or [{"name": "web", "containerPort": PORT}]}], **spec},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    if ip:
        body["status"]["podIP"] = ip
        body["status"]["podIPs"] = [{"ip": ip}]
    if text:
        body["metadata"]["annotations"] = {"amcs.dev/sim-response": text}
    return body


async def add_pod(c: EmbeddedCluster, body: dict) -> dict:
    """Create, then fill status as the kubelet would (what the fleet loader does)."""
    created = await c.create(PODS, body)
    created["status"] = body["status"]
    return await c.replace(PODS, created, subresource="status")


async def set_ready(c: EmbeddedCluster, name: str, ready: bool, ns: str = "demo") -> None:
    current = await c.get(PODS, ns, name)
    current["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    await c.replace(PODS, current, subresource="status")


def svc(name: str, *, selector: dict | None = None, ports=None, ns: str = "demo", **spec) -> dict:
    body = {"ports": ports or [{"name": "http", "port": 80, "targetPort": PORT}], **spec}
    if selector is not False:
        body["selector"] = selector or {"app": name}
    return {"metadata": {"name": name, "namespace": ns, "labels": {"tier": "front"}}, "spec": body}


async def slices_of(c: EmbeddedCluster, service: str, ns: str = "demo") -> list[dict]:
    return (await c.list(ENDPOINT_SLICES, ns, f"{L.LABEL_SERVICE_NAME}={service}")).items


def endpoints(slices: list[dict]) -> dict[str, dict]:
    """Built-in slices' endpoints by pod name (user slices, without targetRef, are skipped)."""
    return {ep["targetRef"]["name"]: ep for s in slices for ep in s.get("endpoints") or []
            if "targetRef" in ep}


@contextlib.asynccontextmanager
async def cluster_with_sim(pods_too: bool = False) -> AsyncIterator[tuple[EmbeddedCluster, EndpointSliceSimulator]]:
    c = EmbeddedCluster("c1", bookmark_interval=0)
    await c.create(NAMESPACES, {"metadata": {"name": "demo"}})
    sim = EndpointSliceSimulator(c)
    pod_sim = PodSimulator(c) if pods_too else None
    await sim.start()
    if pod_sim is not None:
        await pod_sim.start()
    try:
        yield c, sim
    finally:
        await sim.stop()
        if pod_sim is not None:
            await pod_sim.stop()


async def get_text(url: str) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
        return r.status, await r.text(), dict(r.headers)


async def refused(url: str) -> bool:
    try:
        await get_text(url)
    except aiohttp.ClientConnectorError:
        return True
    return False


# ---------------------------------------------------------------------- EndpointSlices


async def test_slices_carry_upstream_labels_owner_ports_and_statefulset_hostnames():
    async with cluster_with_sim() as (c, sim):
        web = await c.create(SERVICES, svc("web", ports=[
            {"name": "http", "port": 80, "targetPort": "web"},   # named: resolved per pod
            {"name": "metrics", "port": 9090, "appProtocol": "http"}]))  # no targetPort: = port
        await c.create(SERVICES, svc("db", clusterIP="None", ports=[{"name": "sql", "port": 3306}]))
        await add_pod(c, pod("web-1", "10.77.0.1", nodeName="node-a"))
        await add_pod(c, pod("db-0", "10.77.0.10", app="db", hostname="db-0", subdomain="db"))
        await add_pod(c, pod("db-x", "10.77.0.11", app="db", hostname="db-x", subdomain="other"))
        await add_pod(c, pod("pending", None))  # no podIP yet: not an endpoint

        s = (await eventually(lambda: _filled(c, "web", 1)))[0]
        assert re.fullmatch(r"web-[a-z0-9]{5}", s["metadata"]["name"])
        assert s["metadata"]["generateName"] == "web-"
        assert s["metadata"]["labels"] == {"tier": "front", L.LABEL_SERVICE_NAME: "web",
                                           L.LABEL_MANAGED_BY: L.BUILTIN_SLICE_CONTROLLER}
        assert s["metadata"]["ownerReferences"] == [{
            "apiVersion": "v1", "kind": "Service", "name": "web", "uid": web["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]
        assert s["addressType"] == "IPv4"
        assert s["ports"] == [{"name": "http", "port": PORT, "protocol": "TCP"},
                              {"name": "metrics", "port": 9090, "protocol": "TCP", "appProtocol": "http"}]
        pod_uid = (await c.get(PODS, "demo", "web-1"))["metadata"]["uid"]
        assert s["endpoints"] == [{
            "addresses": ["10.77.0.1"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": "node-a",
            "targetRef": {"kind": "Pod", "namespace": "demo", "name": "web-1", "uid": pod_uid}}]

        db = await eventually(lambda: _filled(c, "db", 2))
        assert db[0]["metadata"]["labels"][LABEL_HEADLESS] == ""
        eps = endpoints(db)
        assert eps["db-0"]["hostname"] == "db-0"        # subdomain == Service name
        assert "hostname" not in eps["db-x"]            # subdomain names another Service


async def test_readiness_flip_pod_deletion_and_placeholder():
    async with cluster_with_sim() as (c, sim):
        await c.create(SERVICES, svc("web"))
        await add_pod(c, pod("a", "10.77.1.1"))
        await add_pod(c, pod("b", "10.77.1.2", ready=False))

        async def eps():
            got = endpoints(await slices_of(c, "web"))
            return got if len(got) == 2 else None

        got = await eventually(eps)
        assert got["b"]["conditions"] == {"ready": False, "serving": False, "terminating": False}

        await set_ready(c, "a", False)
        await set_ready(c, "b", True)
        await eventually(lambda: _ready_map(c, "web", {"a": False, "b": True}))

        await c.delete(PODS, "demo", "a")
        await eventually(lambda: _ready_map(c, "web", {"b": True}))

        name = (await slices_of(c, "web"))[0]["metadata"]["name"]
        await c.delete(PODS, "demo", "b")

        async def placeholder():
            slices = await slices_of(c, "web")
            return len(slices) == 1 and not slices[0]["endpoints"] and not slices[0]["ports"]

        await eventually(placeholder)
        # The slice was emptied in place (a create + delete pair is one update, as upstream).
        assert [s["metadata"]["name"] for s in await slices_of(c, "web")] == [name]
        await add_pod(c, pod("c", "10.77.1.3"))
        await eventually(lambda: _ready_map(c, "web", {"c": True}))
        assert [s["metadata"]["name"] for s in await slices_of(c, "web")] == [name]


async def _ready_map(c: EmbeddedCluster, service: str, want: dict[str, bool]) -> bool:
    got = endpoints(await slices_of(c, service))
    return {k: v["conditions"]["ready"] for k, v in got.items()} == want


async def test_publish_not_ready_addresses_keeps_endpoints_ready():
    async with cluster_with_sim() as (c, sim):
        await c.create(SERVICES, svc("web", publishNotReadyAddresses=True))
        await add_pod(c, pod("a", "10.77.2.1", ready=False))
        await eventually(lambda: _ready_map(c, "web", {"a": True}))
        ep = endpoints(await slices_of(c, "web"))["a"]
        assert ep["conditions"]["serving"] is False


async def test_service_deletion_removes_its_slices_and_leaves_user_slices_alone():
    async with cluster_with_sim() as (c, sim):
        await c.create(SERVICES, svc("web"))
        await c.create(SERVICES, svc("manual", selector=False))   # selector-less: user-managed
        await c.create(SERVICES, {"metadata": {"name": "ext", "namespace": "demo"},
                                  "spec": {"type": "ExternalName", "externalName": "example.com"}})
        user = {"metadata": {"name": "manual-1", "namespace": "demo",
                             "labels": {L.LABEL_SERVICE_NAME: "manual", L.LABEL_MANAGED_BY: "someone"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 9}],
                "endpoints": [{"addresses": ["10.77.3.9"]}]}
        other = {**user, "metadata": {**user["metadata"], "name": "web-byhand"}}
        other["metadata"]["labels"] = {L.LABEL_SERVICE_NAME: "web", L.LABEL_MANAGED_BY: "someone"}
        await c.create(ENDPOINT_SLICES, user)
        await c.create(ENDPOINT_SLICES, other)
        await add_pod(c, pod("a", "10.77.3.1"))
        await add_pod(c, pod("m", "10.77.3.2", app="manual"))

        await eventually(lambda: _ready_map(c, "web", {"a": True}))
        assert await sim.wait_idle()
        assert [s["metadata"]["name"] for s in await slices_of(c, "manual")] == ["manual-1"]
        assert await slices_of(c, "ext") == []

        await c.delete(SERVICES, "demo", "web")

        async def only_user_slice_left():
            return [s["metadata"]["name"] for s in await slices_of(c, "web")] == ["web-byhand"]

        await eventually(only_user_slice_left)
        assert (await c.get(ENDPOINT_SLICES, "demo", "manual-1"))["endpoints"] == user["endpoints"]


async def test_orphan_builtin_slices_are_deleted_and_recreated_services_get_fresh_ones():
    async with cluster_with_sim() as (c, sim):
        await c.create(SERVICES, svc("web"))
        await add_pod(c, pod("a", "10.77.4.1"))
        first = (await eventually(lambda: slices_of(c, "web")))[0]["metadata"]["name"]
        await sim.stop()  # the controller is down while the Service is replaced
        await c.delete(SERVICES, "demo", "web")
        await c.create(SERVICES, svc("web"))
        await c.create(ENDPOINT_SLICES, {   # a stray slice claiming to be the built-in's
            "metadata": {"name": "web-stray", "namespace": "demo", "labels": {
                L.LABEL_SERVICE_NAME: "web", L.LABEL_MANAGED_BY: L.BUILTIN_SLICE_CONTROLLER}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.77.4.99"]}]})
        sim2 = EndpointSliceSimulator(c)
        await sim2.start()
        try:
            async def fresh():
                slices = await slices_of(c, "web")
                names = [s["metadata"]["name"] for s in slices]
                return len(names) == 1 and names[0] not in (first, "web-stray") and endpoints(slices)

            await eventually(fresh)
        finally:
            await sim2.stop()


async def test_slices_someone_else_edits_or_deletes_are_put_back():
    c = EmbeddedCluster("c1", bookmark_interval=0)
    await c.create(NAMESPACES, {"metadata": {"name": "demo"}})
    sim = EndpointSliceSimulator(c, slice_change_delay=0.05)
    await sim.start()
    try:
        await c.create(SERVICES, svc("web"))
        await add_pod(c, pod("a", "10.77.11.1"))
        s = (await eventually(lambda: _filled(c, "web", 1)))[0]
        s["endpoints"] = [{"addresses": ["10.77.11.99"]}]
        await c.replace(ENDPOINT_SLICES, s)
        await eventually(lambda: _ready_map(c, "web", {"a": True}))
        await c.delete(ENDPOINT_SLICES, "demo", s["metadata"]["name"])
        await eventually(lambda: _ready_map(c, "web", {"a": True}))
    finally:
        await sim.stop()


async def test_unreachable_cluster_catches_up_when_back():
    async with cluster_with_sim() as (c, sim):
        await c.create(SERVICES, svc("web"))
        await add_pod(c, pod("a", "10.77.12.1"))
        await eventually(lambda: _ready_map(c, "web", {"a": True}))
        c.set_reachable(False)
        await asyncio.sleep(0.05)
        c.set_reachable(True)
        await add_pod(c, pod("b", "10.77.12.2"))
        await eventually(lambda: _ready_map(c, "web", {"a": True, "b": True}))


async def _filled(c: EmbeddedCluster, service: str, n: int) -> list[dict] | None:
    slices = await slices_of(c, service)
    return slices if len(endpoints(slices)) == n else None


async def test_compare_then_write_and_at_most_100_endpoints_per_slice():
    async with cluster_with_sim() as (c, sim):
        await c.create(SERVICES, svc("web"))
        for i in range(230):
            await add_pod(c, pod(f"p{i:03d}", f"10.77.5.{i}"))
        await add_pod(c, pod("other", "10.77.6.1", app="other"))

        async def packed():
            slices = await slices_of(c, "web")
            return slices if len(endpoints(slices)) == 230 else None

        slices = await eventually(packed)
        assert sorted(len(s["endpoints"]) for s in slices) == [30, 100, 100]
        assert await sim.wait_idle()
        before = dict(sim.writes)

        # Nothing that matters changed: no writes (an unrelated pod, an annotation).
        other = await c.get(PODS, "demo", "other")
        other["metadata"]["labels"]["x"] = "y"
        await c.replace(PODS, other)
        p = await c.get(PODS, "demo", "p001")
        p["metadata"]["annotations"] = {"note": "touched"}
        await c.replace(PODS, p)
        assert await sim.wait_idle()
        assert dict(sim.writes) == before

        # Removing pods updates slices in place; a freed slot is reused before creating.
        for i in range(5):
            await c.delete(PODS, "demo", f"p{i:03d}")
        await add_pod(c, pod("q", "10.77.5.250"))
        await eventually(lambda: _count_endpoints(c, 226))
        assert await sim.wait_idle()
        assert sim.writes["create"] == before["create"]
        assert len(await slices_of(c, "web")) == 3


async def _count_endpoints(c: EmbeddedCluster, n: int) -> bool:
    return len(endpoints(await slices_of(c, "web"))) == n


async def test_pods_resolving_named_ports_differently_get_separate_slices():
    async with cluster_with_sim() as (c, sim):
        await c.create(SERVICES, svc("web", ports=[{"name": "http", "port": 80, "targetPort": "web"}]))
        await add_pod(c, pod("a", "10.77.7.1", ports=[{"name": "web", "containerPort": 8080}]))
        await add_pod(c, pod("b", "10.77.7.2", ports=[{"name": "web", "containerPort": 9090}]))

        async def by_port():
            slices = await slices_of(c, "web")
            got = {s["ports"][0]["port"]: [e["targetRef"]["name"] for e in s["endpoints"]]
                   for s in slices if s["ports"]}
            return got if len(got) == 2 else None

        assert await eventually(by_port) == {8080: ["a"], 9090: ["b"]}


# ---------------------------------------------------------------------- simulated pods


async def test_pod_serves_its_text_and_healthz_and_follows_its_pod():
    async with cluster_with_sim(pods_too=True) as (c, _):
        await add_pod(c, pod("a", "127.77.8.1", text="This is env c1-beijing !"))
        await add_pod(c, pod("b", "127.77.8.2"))  # no annotation: the default text
        await add_pod(c, pod("remote", "10.77.8.3"))  # not loopback: no server

        status, body, headers = await eventually(lambda: get_text(f"http://127.77.8.1:{PORT}/any/path?q=1"))
        assert (status, body) == (200, "This is env c1-beijing !\n")
        assert headers["X-Pod"] == "a" and headers["X-Cluster"] == "c1"
        assert (await eventually(lambda: get_text(f"http://127.77.8.2:{PORT}/")))[1] == "This is env c1 !\n"
        assert (await get_text(f"http://127.77.8.1:{PORT}/healthz"))[:2] == (200, "ok")

        # The pod moves to a new IP: the old address stops answering, the new one answers.
        current = await c.get(PODS, "demo", "b")
        current["status"]["podIP"] = "127.77.8.20"
        current["status"]["podIPs"] = [{"ip": "127.77.8.20"}]
        await c.replace(PODS, current, subresource="status")
        await eventually(lambda: refused(f"http://127.77.8.2:{PORT}/"))
        await eventually(lambda: get_text(f"http://127.77.8.20:{PORT}/"))

        await c.delete(PODS, "demo", "a")
        await eventually(lambda: refused(f"http://127.77.8.1:{PORT}/"))


async def test_stop_pod_refuses_connections_and_marks_it_not_ready_then_start_pod_restores():
    c = EmbeddedCluster("c1", bookmark_interval=0)
    await c.create(NAMESPACES, {"metadata": {"name": "demo"}})
    await c.create(SERVICES, svc("web"))
    await add_pod(c, pod("a", "127.77.9.1"))
    await add_pod(c, pod("b", "127.77.9.2"))
    slices, pods = EndpointSliceSimulator(c), PodSimulator(c)
    await slices.start()
    await pods.start()
    url = f"http://127.77.9.1:{PORT}/"
    try:
        assert (await get_text(url))[0] == 200
        await pods.stop_pod("demo", "a")
        assert await refused(url)                                    # at once
        ready = next(x for x in (await c.get(PODS, "demo", "a"))["status"]["conditions"]
                     if x["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
        await eventually(lambda: _ready_map(c, "web", {"a": False, "b": True}))
        assert pods.requests[("demo", "a")] == 1

        await pods.start_pod("demo", "a")
        assert (await get_text(url))[0] == 200
        await eventually(lambda: _ready_map(c, "web", {"a": True, "b": True}))

        await pods.stop_cluster()
        assert await refused(url) and await refused(f"http://127.77.9.2:{PORT}/")
        await add_pod(c, pod("c", "127.77.9.3"))  # a pod that appears while the cluster is down
        await pods.wait_idle()
        assert await refused(f"http://127.77.9.3:{PORT}/")
        await pods.start_cluster()
        for ip in ("127.77.9.1", "127.77.9.2", "127.77.9.3"):
            assert (await get_text(f"http://{ip}:{PORT}/"))[0] == 200
    finally:
        await pods.stop()
        await slices.stop()
    assert await refused(url)
    with pytest.raises(NotFound):
        await PodSimulator(c).stop_pod("demo", "nope")


# ---------------------------------------------------------------------- whole fleets


async def test_example_fleet_gets_the_slices_the_builtin_controller_would_write():
    fleet, errors = await load_fleet(EXAMPLES / "service-discovery")
    assert errors == []
    sim = FleetSimulator(fleet, serve_pods=False)  # the example's 127.1.x.x belong to `up`
    await sim.start()
    try:
        c1 = fleet.clusters["cluster1"]
        mysql = await slices_of(c1, "mysql", "provider-ns")
        assert {n: ep.get("hostname") for n, ep in endpoints(mysql).items()} == {
            "mysql-0": "mysql-0", "mysql-1": "mysql-1"}
        assert mysql[0]["ports"] == [{"name": "mysql", "port": 3306, "protocol": "TCP"}]
        svc1 = await slices_of(c1, "service1", "provider-ns")
        assert sorted(a for s in svc1 for ep in s["endpoints"] for a in ep["addresses"]) == [
            "127.1.0.10", "127.1.0.11"]
        assert svc1[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    finally:
        await sim.stop()


FLEET = """
apiVersion: amcs.dev/v1alpha1
kind: Fleet
clusters:
  east: {serviceCIDR: 10.71.0.0/16}
  west: {serviceCIDR: 10.72.0.0/16}
"""

EAST = """
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
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: web, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: demo
  labels: {app: web}
  annotations: {amcs.dev/sim-response: "This is env east !"}
spec:
  containers:
    - name: web
      image: hashicorp/http-echo:1.0
      ports: [{name: http, containerPort: 18080}]
status:
  phase: Running
  podIP: 127.77.10.1
  conditions: [{type: Ready, status: "True"}]
"""


async def test_fleet_simulator_feeds_the_controller_and_failures_reach_other_clusters(tmp_path):
    (tmp_path / "fleet.yaml").write_text(FLEET)
    (tmp_path / "east").mkdir()
    (tmp_path / "east" / "web.yaml").write_text(textwrap.dedent(EAST))
    (tmp_path / "west").mkdir()
    (tmp_path / "west" / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n")
    fleet, errors = await load_fleet(tmp_path)
    assert errors == []
    sim = FleetSimulator(fleet)
    await sim.start()
    controller = Controller(fleet.member_clients(), None, workers=2)
    await controller.start_informers()
    task = asyncio.create_task(controller.run_workers())
    west = fleet.clusters["west"]
    url = f"http://127.77.10.1:{PORT}/"
    try:
        # Right after start(): the slice exists and the pod answers.
        assert len(await slices_of(fleet.clusters["east"], "web")) == 1
        assert (await get_text(url))[1] == "This is env east !\n"

        async def imported_ready():
            listed = await west.list(ENDPOINT_SLICES, "demo", f"{L.LABEL_MCS_SERVICE_NAME}=web")
            return {ep["addresses"][0]: ep["conditions"]["ready"]
                    for s in listed.items for ep in s["endpoints"]}

        assert await eventually(imported_ready) == {"127.77.10.1": True}
        await sim.stop_pod("east", "demo", "web-0")
        assert await refused(url)
        await eventually(lambda: _eq(imported_ready(), {"127.77.10.1": False}))
        await sim.start_pod("east", "demo", "web-0")
        await eventually(lambda: _eq(imported_ready(), {"127.77.10.1": True}))
        await sim.stop_cluster("east")
        assert await refused(url)
        await sim.start_cluster("east")
        assert (await get_text(url))[0] == 200
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await controller.stop()
        await sim.stop()
    assert await refused(url)


async def _eq(got, want) -> bool:
    return (await got) == want
