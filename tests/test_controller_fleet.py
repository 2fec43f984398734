"""Controller behaviours across clusters: conflicts, MultiClusterService, ownership, outages."""

from __future__ import annotations

import asyncio

from fleetkit import endpoint, eventually, running_fleet, service, settle, source_slice

from mcs_controller.access.resources import (
    ENDPOINT_SLICES,
    MULTI_CLUSTER_SERVICES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
)
from mcs_controller.model import labels as L


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


async def test_conflicts_are_resolved_by_oldest_export_and_flagged_on_every_export():
    async with running_fleet(names=("c1", "c2", "c3")) as fleet:
        # c2 exports first (older), c1 one second later (1-second timestamp granularity)
        fleet["c2"].clock = lambda: 1_000_000.0
        fleet["c1"].clock = lambda: 1_000_001.0
        await fleet.exported("c1", "web", "demo", [endpoint("10.1.0.1")], headless=True,
                             ports=[{"name": "http", "port": 80}, {"name": "extra", "port": 81}])
        await fleet.exported("c2", "web", "demo", [endpoint("10.2.0.1")], sessionAffinity="ClientIP",
                             ports=[{"name": "http", "port": 8080}])

        async def flagged():
            imp = await fleet["c3"].get(SERVICE_IMPORTS, "demo", "web")
            assert imp["status"]["clusters"] == [{"cluster": "c2"}, {"cluster": "c1"}]
            for c in ("c1", "c2"):
                cond = conditions(await fleet[c].get(SERVICE_EXPORTS, "demo", "web"))["Conflict"]
                assert cond["status"] == "True"
                assert cond["reason"] == "PortConflict,TypeConflict,SessionAffinityConflict"
                assert '"c2"' in cond["message"] and "type" in cond["message"]
            return imp
        imp = await eventually(flagged)
        assert imp["spec"]["type"] == "ClusterSetIP" and imp["spec"]["sessionAffinity"] == "ClientIP"
        # union by name; the clashing "http" keeps c2's port
        assert imp["spec"]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"},
                                        {"name": "extra", "port": 81, "protocol": "TCP"}]
        # endpoints merged from both clusters, one source cluster per slice
        slices = (await fleet["c3"].list(ENDPOINT_SLICES, "demo", f"{L.LABEL_MCS_SERVICE_NAME}=web")).items
        assert {s["metadata"]["labels"][L.LABEL_SOURCE_CLUSTER] for s in slices} == {"c1", "c2"}


async def test_equal_timestamps_break_ties_by_cluster_name_and_no_conflict_when_equal():
    async with running_fleet(names=("c1", "c2")) as fleet:
        for c in ("c1", "c2"):
            fleet[c].clock = lambda: 2_000_000.0
        await fleet.exported("c2", "db", "demo", [endpoint("10.2.0.1")])
        await fleet.exported("c1", "db", "demo", [endpoint("10.1.0.1")], headless=True)

        async def winner():
            imp = await fleet["c2"].get(SERVICE_IMPORTS, "demo", "db")
            assert imp["spec"]["type"] == "Headless"  # c1 < c2 on a tie
            return True
        await eventually(winner)
        await fleet.exported("c1", "same", "demo", [endpoint("10.1.0.2")])
        await fleet.exported("c2", "same", "demo", [endpoint("10.2.0.2")])

        async def clean():
            cond = conditions(await fleet["c2"].get(SERVICE_EXPORTS, "demo", "same"))["Conflict"]
            return (cond["status"], cond["reason"]) == ("False", "NoConflicts")
        await eventually(clean)


def mcs(name: str, ns: str, providers: list[str], consumers: list[str]) -> dict:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"providerClusters": [{"name": p} for p in providers],
                     "consumerClusters": [{"name": c} for c in consumers]}}


async def mcs_slices(cluster, name: str) -> list[dict]:
    return (await cluster.list(ENDPOINT_SLICES, "demo", f"{L.LABEL_MCS_OBJECT}={name}")).items


async def test_multicluster_service_mirrors_providers_under_the_native_name():
    async with running_fleet(names=("old", "new", "other")) as fleet:
        for c, ip in (("old", "10.1.0.1"), ("new", "10.2.0.1")):
            await fleet[c].create(SERVICES, service("svc3", "demo"))
            await fleet[c].create(ENDPOINT_SLICES, source_slice("svc3", "demo", [endpoint(ip)]))
        await fleet.hub.create(MULTI_CLUSTER_SERVICES,
                               mcs("svc3", "demo", ["old", "new"], ["old", "new", "other", "ghost"]))

        async def mirrored():
            for consumer, remote in (("old", "10.2.0.1"), ("new", "10.1.0.1")):
                slices = await mcs_slices(fleet[consumer], "svc3")
                assert [ep["addresses"][0] for s in slices for ep in s["endpoints"]] == [remote]
                labels = slices[0]["metadata"]["labels"]
                assert labels[L.LABEL_SERVICE_NAME] == "svc3"
                assert labels[L.LABEL_MANAGED_BY] == L.CONTROLLER_NAME
                assert L.LABEL_MCS_SERVICE_NAME not in labels
            return True
        await eventually(mirrored)
        # "other" has no native svc3: nothing there; "ghost" is reported
        assert await mcs_slices(fleet["other"], "svc3") == []
        obj = await eventually(lambda: _with_status(fleet.hub))
        assert obj["status"]["unknownClusters"] == ["ghost"]
        assert conditions(obj)["Ready"]["reason"] == "UnknownClusters"
        # dropping "new" as a provider removes exactly what it added
        await fleet.hub.patch(MULTI_CLUSTER_SERVICES, "demo", "svc3",
                              {"spec": {"providerClusters": [{"name": "old"}]}})
        await eventually(lambda: _count_is(fleet["old"], 0))
        assert len(await mcs_slices(fleet["new"], "svc3")) == 1
        # the native slices were never touched
        assert len((await fleet["old"].list(ENDPOINT_SLICES, "demo", f"{L.LABEL_MANAGED_BY}={L.BUILTIN_SLICE_CONTROLLER}")).items) == 1
        await fleet.hub.delete(MULTI_CLUSTER_SERVICES, "demo", "svc3")
        await eventually(lambda: _count_is(fleet["new"], 0))


async def _with_status(hub):
    obj = await hub.get(MULTI_CLUSTER_SERVICES, "demo", "svc3")
    return obj if obj.get("status") else None


async def _count_is(cluster, n: int) -> bool:
    return len(await mcs_slices(cluster, "svc3")) == n


async def test_objects_of_others_are_never_touched():
    async with running_fleet(names=("c1", "c2")) as fleet:
        c2 = fleet["c2"]
        # a user's own amcs-web Service and a slice that claims the shadow's name
        await c2.create(SERVICES, {**service("amcs-web", "demo")})
        foreign = source_slice("amcs-web", "demo", [endpoint("10.9.9.9")], name="amcs-web-user")
        foreign["metadata"]["labels"][L.LABEL_MCS_SERVICE_NAME] = "web"
        await c2.create(ENDPOINT_SLICES, foreign)
        before_svc = await c2.get(SERVICES, "demo", "amcs-web")
        await fleet.exported("c1", "web", "demo", [endpoint("10.1.0.1")])

        async def pending():
            cond = conditions(await fleet["c1"].get(SERVICE_EXPORTS, "demo", "web"))["Ready"]
            assert (cond["status"], cond["reason"]) == ("False", "Pending")
            return "c2" in cond["message"]
        await eventually(pending)
        assert await c2.get(SERVICES, "demo", "amcs-web") == before_svc
        assert (await c2.get(ENDPOINT_SLICES, "demo", "amcs-web-user"))["endpoints"][0]["addresses"] == ["10.9.9.9"]
        await fleet["c1"].delete(SERVICE_EXPORTS, "demo", "web")
        await asyncio.sleep(0.3)
        assert await c2.get(SERVICES, "demo", "amcs-web") == before_svc
        assert await c2.get(ENDPOINT_SLICES, "demo", "amcs-web-user")


async def test_unreachable_cluster_endpoints_marked_not_ready_after_grace_then_restored():
    async with running_fleet(names=("c1", "c2"), grace_period=0.3) as fleet:
        await fleet.exported("c1", "web", "demo", [endpoint("10.1.0.1")])

        async def ready_in_c2(flag: bool) -> bool:
            slices = (await fleet["c2"].list(ENDPOINT_SLICES, "demo", f"{L.LABEL_MCS_SERVICE_NAME}=web")).items
            eps = [ep for s in slices for ep in s["endpoints"]]
            return len(eps) == 1 and eps[0]["conditions"]["ready"] is flag
        await eventually(lambda: ready_in_c2(True))
        fleet["c1"].set_reachable(False)
        await asyncio.sleep(0.1)
        assert await ready_in_c2(True)  # within the grace period nothing changes
        await eventually(lambda: ready_in_c2(False), within=3.0)
        # nothing was deleted while it was away
        assert await fleet["c2"].get(SERVICE_IMPORTS, "demo", "web")
        fleet["c1"].set_reachable(True)
        await eventually(lambda: ready_in_c2(True), within=5.0)
        await settle(fleet.controller)
