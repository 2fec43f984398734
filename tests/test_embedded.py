"""The embedded store behaves like the API server where our code depends on it."""

from __future__ import annotations

import asyncio

import pytest

from mcs_controller.access import AlreadyExists, Conflict, Gone, Invalid, NotFound, Unreachable
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import (
    ENDPOINT_SLICES,
    NAMESPACES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
)


def svc(name: str, ns: str = "default", **spec) -> dict:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"ports": [{"port": 80}], **spec}}


async def next_event(stream, within: float = 1.0):
    return await asyncio.wait_for(stream.__anext__(), within)


async def test_create_sets_metadata_and_allocates_cluster_ip():
    c = EmbeddedCluster("c1", service_cidr="10.5.0.0/24")
    created = await c.create(SERVICES, svc("web"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    assert created["apiVersion"] == "v1" and created["kind"] == "Service"
    assert created["spec"]["clusterIP"].startswith("10.5.0.")
    assert created["spec"]["clusterIPs"] == [created["spec"]["clusterIP"]]
    assert created["spec"]["ports"][0] == {"port": 80, "protocol": "TCP", "targetPort": 80}
    headless = await c.create(SERVICES, svc("db", clusterIP="None"))
    assert headless["spec"]["clusterIPs"] == ["None"]
    other = await c.create(SERVICES, svc("other"))
    assert other["spec"]["clusterIP"] != created["spec"]["clusterIP"]


async def test_cluster_ip_is_immutable_and_released_on_delete():
    c = EmbeddedCluster("c1", service_cidr="10.5.0.0/30")  # two usable addresses
    a = await c.create(SERVICES, svc("a"))
    await c.create(SERVICES, svc("b"))
    with pytest.raises(Invalid, match="full"):
        await c.create(SERVICES, svc("c"))
    changed = {**a, "spec": {**a["spec"], "clusterIP": "10.5.0.3", "clusterIPs": ["10.5.0.3"]}}
    with pytest.raises(Invalid, match="immutable"):
        await c.replace(SERVICES, changed)
    await c.delete(SERVICES, "default", "a")
    again = await c.create(SERVICES, svc("c"))
    assert again["spec"]["clusterIP"] == a["spec"]["clusterIP"]


async def test_generate_name_already_exists_and_missing_namespace():
    c = EmbeddedCluster("c1")
    made = await c.create(SERVICES, {"metadata": {"generateName": "x-", "namespace": "default"},
                                     "spec": {"ports": [{"port": 1}]}})
    assert made["metadata"]["name"].startswith("x-") and len(made["metadata"]["name"]) == 7
    await c.create(SERVICES, svc("web"))
    with pytest.raises(AlreadyExists):
        await c.create(SERVICES, svc("web"))
    with pytest.raises(NotFound, match='namespaces "nope" not found'):
        await c.create(SERVICES, svc("web", ns="nope"))


async def test_stale_replace_conflicts_and_status_subresource():
    c = EmbeddedCluster("c1")
    await c.create(NAMESPACES, {"metadata": {"name": "ns"}})
    export = await c.create(SERVICE_EXPORTS, {"metadata": {"name": "s", "namespace": "ns"}})
    fresh = await c.replace(SERVICE_EXPORTS, {**export, "spec": {"exportedLabels": {"a": "b"}}})
    assert fresh["metadata"]["generation"] == 2
    with pytest.raises(Conflict):
        await c.replace(SERVICE_EXPORTS, {**export, "spec": {}})
    # status is ignored on the main resource, written only through /status
    ignored = await c.replace(SERVICE_EXPORTS, {**fresh, "status": {"conditions": []}})
    assert "status" not in ignored
    status = {"conditions": [{"type": "Valid", "status": "True"}]}
    written = await c.patch(SERVICE_EXPORTS, "ns", "s", {"status": status}, subresource="status")
    assert written["status"] == status and written["metadata"]["generation"] == 2


async def test_noop_write_keeps_resource_version():
    c = EmbeddedCluster("c1")
    created = await c.create(SERVICES, svc("web"))
    same = await c.patch(SERVICES, "default", "web", {"metadata": {"labels": None}})
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_both_mcs_versions_serve_one_object():
    c = EmbeddedCluster("c1")
    spec = {"type": "ClusterSetIP", "ports": [{"port": 80}]}
    await c.create(SERVICE_IMPORTS, {"metadata": {"name": "s", "namespace": "default"}, "spec": spec})
    beta = await c.get(SERVICE_IMPORTS.at_version("v1beta1"), "default", "s")
    assert beta["apiVersion"] == "multicluster.x-k8s.io/v1beta1" and beta["spec"] == spec


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", ["a", "b"]),
        ("app==web,tier=front", ["a"]),
        ("app!=web", ["c"]),
        ("tier in (front, back)", ["a", "b"]),
        ("tier notin (front)", ["b", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c"]),
        ("", ["a", "b", "c"]),
    ],
)
async def test_label_selectors(selector, expected):
    c = EmbeddedCluster("c1")
    for name, labels in (("a", {"app": "web", "tier": "front"}), ("b", {"app": "web", "tier": "back"}),
                         ("c", {"app": "db"})):
        await c.create(SERVICES, {**svc(name), "metadata": {"name": name, "namespace": "default",
                                                             "labels": labels}})
    listed = await c.list(SERVICES, "default", label_selector=selector)
    assert [o["metadata"]["name"] for o in listed.items] == expected


async def test_watch_resumes_from_resource_version_and_filters_by_selector():
    c = EmbeddedCluster("c1", bookmark_interval=0)
    start = (await c.list(SERVICES)).resource_version
    await c.create(SERVICES, {**svc("a"), "metadata": {"name": "a", "namespace": "default",
                                                       "labels": {"app": "web"}}})
    stream = c.watch(SERVICES, label_selector="app=web", resource_version=start)
    ev = await next_event(stream)
    assert (ev.type, ev.object["metadata"]["name"]) == ("ADDED", "a")
    # a label change that leaves the selector looks like a deletion to this watcher
    await c.patch(SERVICES, "default", "a", {"metadata": {"labels": {"app": "db"}}})
    ev = await next_event(stream)
    assert ev.type == "DELETED"
    await c.patch(SERVICES, "default", "a", {"metadata": {"labels": {"app": "web"}}})
    assert (await next_event(stream)).type == "ADDED"
    await c.delete(SERVICES, "default", "a")
    ev = await next_event(stream)
    assert ev.type == "DELETED" and int(ev.object["metadata"]["resourceVersion"]) == c.resource_version
    await stream.aclose()


async def test_watch_from_compacted_version_is_gone():
    c = EmbeddedCluster("c1", history=3)
    start = (await c.list(SERVICES)).resource_version
    for i in range(5):
        await c.create(SERVICES, svc(f"s{i}"))
    with pytest.raises(Gone):
        await anext(c.watch(SERVICES, resource_version=start))


async def test_watch_sends_bookmarks_and_honours_timeout():
    c = EmbeddedCluster("c1", bookmark_interval=0.05)
    stream = c.watch(SERVICES, resource_version=str(c.resource_version), timeout_seconds=0.3)
    events = [ev async for ev in stream]
    assert events and all(ev.type == "BOOKMARK" for ev in events)
    assert events[0].object["metadata"]["resourceVersion"] == str(c.resource_version)


async def test_unreachable_breaks_calls_and_watches():
    c = EmbeddedCluster("c1", bookmark_interval=0)
    stream = c.watch(SERVICES, resource_version=str(c.resource_version))
    pending = asyncio.ensure_future(next_event(stream))
    await asyncio.sleep(0)
    c.set_reachable(False)
    with pytest.raises(Unreachable):
        await pending
    with pytest.raises(Unreachable):
        await c.list(SERVICES)
    c.set_reachable(True)
    assert (await c.list(SERVICES)).items == []


async def test_owner_reference_garbage_collection_and_namespace_deletion():
    c = EmbeddedCluster("c1")
    await c.create(NAMESPACES, {"metadata": {"name": "ns"}})
    owner = await c.create(SERVICE_IMPORTS, {"metadata": {"name": "s", "namespace": "ns"},
                                             "spec": {"type": "Headless", "ports": []}})
    ref = {"apiVersion": owner["apiVersion"], "kind": "ServiceImport", "name": "s",
           "uid": owner["metadata"]["uid"]}
    await c.create(ENDPOINT_SLICES, {"metadata": {"name": "e", "namespace": "ns",
                                                  "ownerReferences": [ref]},
                                     "addressType": "IPv4", "endpoints": []})
    await c.create(SERVICES, svc("keep", ns="ns"))
    await c.delete(SERVICE_IMPORTS, "ns", "s")
    assert c.count(ENDPOINT_SLICES) == 0
    await c.delete(NAMESPACES, None, "ns")
    assert (await c.list(SERVICES, "ns")).items == []


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"metadata": {"name": "x"}, "addressType": "IPv4", "endpoints": [{}]}, "endpoints[0].addresses"),
        ({"metadata": {"name": "x"}, "addressType": "IPv5", "endpoints": []}, "addressType"),
        ({"metadata": {"name": "x"}, "addressType": "IPv4",
          "endpoints": [{"addresses": ["::1"]}]}, "endpoints[0].addresses[0]"),
        ({"metadata": {"name": "Bad_Name"}, "addressType": "IPv4", "endpoints": []}, "metadata.name"),
    ],
)
async def test_invalid_objects_name_the_field(obj, field):
    c = EmbeddedCluster("c1")
    with pytest.raises(Invalid, match=field.replace("[", r"\[").replace("]", r"\]")):
        await c.create(ENDPOINT_SLICES, obj)
