"""The controller's behaviours on an embedded fleet (issue 2, item 4)."""

from __future__ import annotations

import pytest
from fleetkit import endpoint, eventually, export, running_fleet, service, settle, source_slice

from mcs_controller.access.resources import (
    ENDPOINT_SLICES,
    NAMESPACES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
)
from mcs_controller.engine.controller import Controller
from mcs_controller.model import labels as L


async def imported_slices(cluster, name: str, ns: str = "demo") -> list[dict]:
    listed = await cluster.list(ENDPOINT_SLICES, ns, f"{L.LABEL_MCS_SERVICE_NAME}={name}")
    return listed.items


def addresses(slices: list[dict]) -> set[str]:
    return {a for s in slices for ep in s["endpoints"] for a in ep["addresses"]}


async def test_export_creates_import_shadow_and_slices_in_every_cluster_with_the_namespace():
    async with running_fleet(names=("c1", "c2", "c3")) as fleet:
        # c3 lacks the namespace: namespace sameness says it gets nothing
        await fleet["c1"].create(SERVICES, service("web", "demo", sessionAffinity="ClientIP",
                                                   sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}))
        await fleet["c3"].delete(NAMESPACES, None, "demo")
        await fleet["c1"].create(ENDPOINT_SLICES, source_slice("web", "demo", [
            endpoint("10.1.0.1", hostname="web-0", nodeName="n1", zone="z1"), endpoint("10.1.0.2")]))
        await fleet["c1"].create(SERVICE_EXPORTS, export("web", "demo"))
        for name in ("c1", "c2"):
            c = fleet[name]
            imp = await eventually(lambda c=c: c.get(SERVICE_IMPORTS, "demo", "web"))
            shadow = await c.get(SERVICES, "demo", "amcs-web")
            assert "selector" not in shadow["spec"]
            assert imp["spec"]["type"] == "ClusterSetIP"
            assert imp["spec"]["ips"] == shadow["spec"]["clusterIPs"]
            assert imp["spec"]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP"}]
            assert imp["spec"]["sessionAffinity"] == "ClientIP"
            assert imp["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 60}}
            slices = await eventually(lambda c=c: imported_slices(c, "web"))
            assert len(slices) == 1
            s = slices[0]
            assert s["metadata"]["labels"] == {
                L.LABEL_MCS_SERVICE_NAME: "web",
                L.LABEL_SOURCE_CLUSTER: "c1",
                L.LABEL_MANAGED_BY: L.CONTROLLER_NAME,
                L.LABEL_SERVICE_NAME: "amcs-web",
                L.LABEL_OWNED_BY: L.OWNED_BY_VALUE,
                L.LABEL_ORIGIN: L.ORIGIN_EXPORT,
            }
            assert s["addressType"] == "IPv4"
            assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
            first = s["endpoints"][0]
            assert first["hostname"] == "web-0" and first["nodeName"] == "n1" and first["zone"] == "z1"
            assert s["metadata"]["ownerReferences"][0]["uid"] == imp["metadata"]["uid"]
            assert shadow["metadata"]["ownerReferences"][0]["uid"] == imp["metadata"]["uid"]
        await settle(fleet.controller)
        assert (await fleet["c3"].list(SERVICE_IMPORTS)).items == []
        assert (await fleet["c3"].list(SERVICES, "demo")).items == []
        exp = await fleet["c1"].get(SERVICE_EXPORTS, "demo", "web")
        conds = {c["type"]: c for c in exp["status"]["conditions"]}
        assert (conds["Valid"]["status"], conds["Valid"]["reason"]) == ("True", "Valid")
        assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("True", "Exported")
        assert (conds["Conflict"]["status"], conds["Conflict"]["reason"]) == ("False", "NoConflicts")
        imp = await fleet["c2"].get(SERVICE_IMPORTS, "demo", "web")
        assert imp["status"]["clusters"] == [{"cluster": "c1"}]


async def test_headless_export_has_empty_ips_and_headless_shadow():
    async with running_fleet(names=("c1", "c2")) as fleet:
        await fleet.exported("c1", "mysql", "demo",
                             [endpoint("10.1.0.5", hostname="mysql-0")], headless=True)
        c2 = fleet["c2"]
        imp = await eventually(lambda: c2.get(SERVICE_IMPORTS, "demo", "mysql"))
        assert imp["spec"]["type"] == "Headless" and not imp["spec"].get("ips")
        shadow = await c2.get(SERVICES, "demo", "amcs-mysql")
        assert shadow["spec"]["clusterIP"] == "None"
        slices = await eventually(lambda: imported_slices(c2, "mysql"))
        assert slices[0]["endpoints"][0]["hostname"] == "mysql-0"


async def test_slices_split_by_family_and_at_most_100_endpoints():
    async with running_fleet(names=("c1", "c2")) as fleet:
        c1 = fleet["c1"]
        await c1.create(SERVICES, service("big", "demo"))
        v4 = [endpoint(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(250)]
        await c1.create(ENDPOINT_SLICES, source_slice("big", "demo", v4[:200], name="big-a"))
        await c1.create(ENDPOINT_SLICES, source_slice("big", "demo", v4[200:], name="big-b"))
        await c1.create(ENDPOINT_SLICES, source_slice("big", "demo", [endpoint("fd00::1")],
                                                      name="big-6", family="IPv6"))
        await c1.create(SERVICE_EXPORTS, export("big", "demo"))

        async def check():
            slices = await imported_slices(fleet["c2"], "big")
            assert addresses(slices) == {a for ep in v4 for a in ep["addresses"]} | {"fd00::1"}
            return slices
        slices = await eventually(check)
        assert sorted(len(s["endpoints"]) for s in slices) == [1, 50, 100, 100]
        assert {s["addressType"] for s in slices if len(s["endpoints"]) == 1} == {"IPv6"}


async def test_endpoint_changes_reach_every_consumer():
    async with running_fleet(names=("c1", "c2", "c3")) as fleet:
        await fleet.exported("c1", "web", "demo", [endpoint("10.1.0.1")])
        for c in ("c2", "c3"):
            await eventually(lambda c=c: has_addresses(fleet[c], {"10.1.0.1"}))
        # add one, turn one not ready and terminating
        await fleet["c1"].patch(ENDPOINT_SLICES, "demo", "web-abcde", {"endpoints": [
            {"addresses": ["10.1.0.1"], "conditions": {"ready": False, "serving": True, "terminating": True}},
            endpoint("10.1.0.2"),
        ]})

        async def changed(c):
            slices = await imported_slices(fleet[c], "web")
            eps = {ep["addresses"][0]: ep for s in slices for ep in s["endpoints"]}
            assert eps["10.1.0.1"]["conditions"] == {"ready": False, "serving": True, "terminating": True}
            return set(eps) == {"10.1.0.1", "10.1.0.2"}
        for c in ("c1", "c2", "c3"):
            await eventually(lambda c=c: changed(c), within=1.0)
        await fleet["c1"].patch(ENDPOINT_SLICES, "demo", "web-abcde", {"endpoints": [endpoint("10.1.0.2")]})
        for c in ("c2", "c3"):
            await eventually(lambda c=c: has_addresses(fleet[c], {"10.1.0.2"}), within=1.0)


async def has_addresses(cluster, want: set[str], name: str = "web") -> bool:
    return addresses(await imported_slices(cluster, name)) == want


async def test_idempotent_second_reconcile_and_restart_write_nothing():
    async with running_fleet(names=("c1", "c2")) as fleet:
        await fleet.exported("c1", "web", "demo", [endpoint("10.1.0.1")])
        await fleet.exported("c2", "web", "demo", [endpoint("10.2.0.1")])
        await eventually(lambda: has_addresses(fleet["c1"], {"10.1.0.1", "10.2.0.1"}))
        await settle(fleet.controller)
        before = fleet.controller.writer.total
        await fleet.controller.reconcile(("demo", "web"))
        assert fleet.controller.writer.total == before
    # a fresh controller over the same clusters: a restart
    restarted = Controller(fleet.clusters, fleet.hub, workers=1)
    await restarted.start_informers()
    await restarted.wait_synced()
    for key in restarted.all_keys():
        await restarted.reconcile(key)
    assert restarted.writer.total == 0
    await restarted.stop()


@pytest.mark.parametrize("kind", ["missing", "ExternalName"])
async def test_invalid_exports_get_valid_false_and_no_import(kind):
    async with running_fleet(names=("c1", "c2")) as fleet:
        c1 = fleet["c1"]
        if kind == "ExternalName":
            await c1.create(SERVICES, {"metadata": {"name": "web", "namespace": "demo"},
                                       "spec": {"type": "ExternalName", "externalName": "example.com"}})
        await c1.create(SERVICE_EXPORTS, export("web", "demo"))
        reason = "NoService" if kind == "missing" else "InvalidServiceType"

        async def valid():
            exp = await c1.get(SERVICE_EXPORTS, "demo", "web")
            conds = {c["type"]: c for c in exp["status"]["conditions"]}
            assert (conds["Valid"]["status"], conds["Valid"]["reason"]) == ("False", reason)
            return True
        await eventually(valid)
        await settle(fleet.controller)
        assert (await fleet["c2"].list(SERVICE_IMPORTS)).items == []
        if kind == "missing":  # recovers once the Service appears
            await c1.create(SERVICES, service("web", "demo"))
            await eventually(lambda: fleet["c2"].get(SERVICE_IMPORTS, "demo", "web"))

            async def now_valid():
                exp = await c1.get(SERVICE_EXPORTS, "demo", "web")
                conds = {c["type"]: c["status"] for c in exp["status"]["conditions"]}
                return conds["Valid"] == "True" and conds["Ready"] == "True"
            await eventually(now_valid)


async def test_unexport_and_service_deletion_remove_endpoints_then_imports():
    async with running_fleet(names=("c1", "c2")) as fleet:
        await fleet.exported("c1", "web", "demo", [endpoint("10.1.0.1")])
        await fleet.exported("c2", "web", "demo", [endpoint("10.2.0.1")])
        await eventually(lambda: has_addresses(fleet["c2"], {"10.1.0.1", "10.2.0.1"}))
        await fleet["c1"].delete(SERVICE_EXPORTS, "demo", "web")
        await eventually(lambda: has_addresses(fleet["c2"], {"10.2.0.1"}))
        imp = await fleet["c2"].get(SERVICE_IMPORTS, "demo", "web")
        assert imp["status"]["clusters"] == [{"cluster": "c2"}]
        await fleet["c2"].delete(SERVICES, "demo", "web")

        async def all_gone():
            for c in ("c1", "c2"):
                assert (await fleet[c].list(SERVICE_IMPORTS)).items == []
                assert (await fleet[c].list(SERVICES, "demo", f"{L.LABEL_OWNED_BY}")).items == []
                assert await imported_slices(fleet[c], "web") == []
            return True
        await eventually(all_gone)
        # the user's own objects are untouched
        assert await fleet["c1"].get(SERVICES, "demo", "web")
