"""Endpoint discovery across member clusters (EmbeddedCluster + informers) through UpstreamManager."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator

from fleetkit import endpoint, eventually, namespace, service, source_slice

from gateway.types import CLUSTER_LABEL, BackendPolicy, BackendRef, RequestView
from gateway.upstream.manager import UpstreamManager
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import ENDPOINT_SLICES, NAMESPACES, PODS, SERVICES
from mcs_controller.model.desired import mcs_slice_labels
from mcs_controller.model.slices import mirror_slices

REQ = RequestView("GET", "/", "example.com", {}, "192.0.2.1")
WEB = BackendRef("demo", "web", 80)


@contextlib.asynccontextmanager
async def members(*names: str, **kw) -> AsyncIterator[tuple[dict[str, EmbeddedCluster], UpstreamManager]]:
    clusters = {}
    for i, name in enumerate(names):
        c = EmbeddedCluster(name, service_cidr=f"10.{50 + i}.0.0/16", bookmark_interval=0)
        await c.create(NAMESPACES, namespace("demo"))
        clusters[name] = c
    mgr = UpstreamManager(clusters, informer_backoff_max=0.2, **kw)
    try:
        yield clusters, mgr
    finally:
        await mgr.stop()


async def web(c: EmbeddedCluster, ips: list, *, ports=None, slice_ports=None, name=None, ready=True):
    """Service `web` and one built-in slice with these endpoints (ips or endpoint dicts)."""
    with contextlib.suppress(Exception):
        await c.create(SERVICES, service("web", "demo", ports=ports))
    eps = [ip if isinstance(ip, dict) else endpoint(ip, ready) for ip in ips]
    await c.create(ENDPOINT_SLICES, source_slice("web", "demo", eps, name=name, ports=slice_ports))


def addrs(mgr: UpstreamManager, ref: BackendRef = WEB, n: int = 40) -> set[tuple[str, str, int]]:
    out = set()
    for _ in range(n):
        ep = mgr.pick(ref, REQ)
        if ep is not None:
            out.add((ep.cluster, ep.ip, ep.port))
    return out


async def test_union_of_clusters_round_robin_follows_pod_counts():
    async with members("a", "b") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1", "10.1.0.2", "10.1.0.3"])
        await web(cl["b"], ["10.2.0.1"])
        assert await mgr.start()
        mgr.sync({WEB: BackendPolicy()})
        picks = Counter(mgr.pick(WEB, REQ).cluster for _ in range(400))
        assert picks == {"a": 300, "b": 100}
        assert mgr.ready


async def test_not_ready_and_terminating_excluded_ready_unset_included():
    async with members("a") as (cl, mgr):
        term = {"addresses": ["10.1.0.4"], "conditions": {"ready": False, "serving": True, "terminating": True}}
        # publishNotReadyAddresses keeps ready=true while terminating: still no new traffic.
        term2 = {"addresses": ["10.1.0.5"], "conditions": {"ready": True, "serving": True, "terminating": True}}
        await web(cl["a"], ["10.1.0.1", endpoint("10.1.0.2", ready=False), endpoint("10.1.0.3", ready=None),
                            term, term2])
        await mgr.start()
        mgr.sync({WEB: BackendPolicy()})
        assert addrs(mgr) == {("a", "10.1.0.1", 8080), ("a", "10.1.0.3", 8080)}
        described = {d["ip"]: d for d in mgr.describe(WEB)}
        assert [described[f"10.1.0.{i}"]["ready"] for i in (2, 4, 5)] == [False, False, False]
        assert described["10.1.0.1"] | {"active": 0} == {
            "cluster": "a", "ip": "10.1.0.1", "port": 8080, "ready": True, "healthy": None,
            "ejected": False, "ejected_for": 0.0, "active": 0, "priority": 0, "health_checked": False}


async def test_slices_written_by_our_mcs_controller_are_not_counted_twice():
    async with members("a", "b") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1"])
        await web(cl["b"], ["10.2.0.1"])
        # What the controller writes into b for a MultiClusterService: a's endpoints under b's
        # native service name -- kube-proxy in b needs them, the gateway already has them.
        source = await cl["a"].list(ENDPOINT_SLICES, namespace="demo")
        for s in mirror_slices(source_slices=source.items, source_cluster="a", namespace="demo",
                               name_prefix="web-from", labels=mcs_slice_labels("web")):
            await cl["b"].create(ENDPOINT_SLICES, s)
        await mgr.start()
        mgr.sync({WEB: BackendPolicy()})
        assert addrs(mgr) == {("a", "10.1.0.1", 8080), ("b", "10.2.0.1", 8080)}
        assert len(mgr.describe(WEB)) == 2


async def test_port_by_number_and_by_name_per_cluster():
    ports = [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "admin", "port": 9000, "targetPort": 9090}]
    async with members("a", "b") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1"], ports=ports, slice_ports=[
            {"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "admin", "port": 9090, "protocol": "TCP"}])
        # b runs the same Service with another target port: resolved per cluster.
        await web(cl["b"], ["10.2.0.1"], ports=ports, slice_ports=[
            {"name": "admin", "port": 9191, "protocol": "TCP"}, {"name": "http", "port": 8081, "protocol": "TCP"}])
        await mgr.start()
        refs = {r: BackendPolicy() for r in (
            WEB, BackendRef("demo", "web", "http"), BackendRef("demo", "web", 9000),
            BackendRef("demo", "web", "admin"), BackendRef("demo", "web", 81), BackendRef("demo", "nope", 80))}
        mgr.sync(refs)
        http = {("a", "10.1.0.1", 8080), ("b", "10.2.0.1", 8081)}
        admin = {("a", "10.1.0.1", 9090), ("b", "10.2.0.1", 9191)}
        assert addrs(mgr, WEB) == http == addrs(mgr, BackendRef("demo", "web", "http"))
        assert addrs(mgr, BackendRef("demo", "web", 9000)) == admin == addrs(mgr, BackendRef("demo", "web", "admin"))
        assert mgr.pick(BackendRef("demo", "web", 81), REQ) is None
        assert mgr.pick(BackendRef("demo", "nope", 80), REQ) is None


async def test_unnamed_single_port_uses_the_slices_only_port():
    async with members("a", "b") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1"], ports=[{"port": 80, "targetPort": 8080}],
                  slice_ports=[{"port": 8080, "protocol": "TCP"}])
        # A hand-written slice without port names behind a single named Service port.
        await web(cl["b"], ["10.2.0.1"], ports=[{"name": "web", "port": 80, "targetPort": 8080}],
                  slice_ports=[{"port": 8088, "protocol": "TCP"}])
        await mgr.start()
        mgr.sync({WEB: BackendPolicy()})
        assert addrs(mgr) == {("a", "10.1.0.1", 8080), ("b", "10.2.0.1", 8088)}


async def add_pod(c: EmbeddedCluster, name: str, ip: str, labels: dict) -> None:
    await c.create(PODS, {"metadata": {"name": name, "namespace": "demo", "labels": labels},
                          "spec": {"containers": [{"name": "c", "image": "x"}]}})
    current = await c.get(PODS, "demo", name)
    current["status"] = {"phase": "Running", "podIP": ip}
    await c.replace(PODS, current, subresource="status")


def pod_ep(ip: str, pod: str) -> dict:
    return endpoint(ip, targetRef={"kind": "Pod", "namespace": "demo", "name": pod})


async def test_subsets_use_pod_labels_fail_open_and_cluster_restriction():
    async with members("a", "b") as (cl, mgr):
        await add_pod(cl["a"], "web-1", "10.1.0.1", {"app": "web", "version": "v1"})
        await add_pod(cl["a"], "web-2", "10.1.0.2", {"app": "web", "version": "v2"})
        await add_pod(cl["b"], "web-1", "10.2.0.1", {"app": "web", "version": "v1"})
        await web(cl["a"], [pod_ep("10.1.0.1", "web-1"), pod_ep("10.1.0.2", "web-2")])
        await web(cl["b"], [pod_ep("10.2.0.1", "web-1")])
        await mgr.start()
        v1 = BackendRef("demo", "web", 80, subset=(("version", "v1"),))
        v3 = BackendRef("demo", "web", 80, subset=(("version", "v3"),))
        in_b = BackendRef("demo", "web", 80, subset=((CLUSTER_LABEL, "b"),))
        only_a = BackendRef("demo", "web", 80, cluster="a")
        a_v1 = BackendRef("demo", "web", 80, subset=(("version", "v1"),), cluster="a")
        nowhere = BackendRef("demo", "web", 80, cluster="zz")
        mgr.sync({r: BackendPolicy() for r in (WEB, v1, v3, in_b, only_a, a_v1, nowhere)})
        everything = {("a", "10.1.0.1", 8080), ("a", "10.1.0.2", 8080), ("b", "10.2.0.1", 8080)}
        assert addrs(mgr, v1) == {("a", "10.1.0.1", 8080), ("b", "10.2.0.1", 8080)}
        assert addrs(mgr, v3) == everything  # no pod carries the labels: the whole Service
        assert addrs(mgr, in_b) == {("b", "10.2.0.1", 8080)}
        assert addrs(mgr, only_a) == {("a", "10.1.0.1", 8080), ("a", "10.1.0.2", 8080)}
        assert addrs(mgr, a_v1) == {("a", "10.1.0.1", 8080)}
        assert mgr.pick(nowhere, REQ) is None
        labels = mgr.pick(in_b, REQ).labels
        assert labels == {"app": "web", "version": "v1", CLUSTER_LABEL: "b"}
        # A pod relabelled: the subset follows within a second.
        pod = await cl["a"].get(PODS, "demo", "web-2")
        pod["metadata"]["labels"]["version"] = "v1"
        await cl["a"].replace(PODS, pod)
        await eventually(lambda: addrs(mgr, v1) == everything, within=1.0)


async def test_updates_apply_within_a_second_and_keep_endpoint_identity():
    async with members("a", "b") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1", "10.1.0.2"])
        await web(cl["b"], ["10.2.0.1"])
        await mgr.start()
        mgr.sync({WEB: BackendPolicy()})
        objs = {ep.ip: ep for ep in (mgr.pick(WEB, REQ) for _ in range(3))}
        kept = objs["10.1.0.1"]
        kept.active_requests = 2  # an in-flight request's view must survive the update
        for _ in range(3):
            mgr.report(kept, "http_5xx", 500)  # so must outlier counters
        s = await cl["a"].get(ENDPOINT_SLICES, "demo", "web-abcde")
        s["endpoints"] = [endpoint("10.1.0.1"), endpoint("10.1.0.3")]
        t0 = time.monotonic()
        await cl["a"].replace(ENDPOINT_SLICES, s)
        await eventually(lambda: addrs(mgr) == {("a", "10.1.0.1", 8080), ("a", "10.1.0.3", 8080),
                                                ("b", "10.2.0.1", 8080)}, within=1.0)
        assert time.monotonic() - t0 < 1.0
        again = [ep for ep in (mgr.pick(WEB, REQ) for _ in range(3)) if ep.ip == "10.1.0.1"]
        assert again and again[0] is kept and kept.active_requests == 2
        assert mgr.outlier.consecutive(kept) == (3, 0)
        assert objs["10.1.0.2"].ip not in {d["ip"] for d in mgr.describe(WEB)}
        assert mgr.catalog.interned("a", "10.1.0.2", 8080) is None  # forgotten, not leaked
        # Readiness flips in place, on the same object.
        s = await cl["a"].get(ENDPOINT_SLICES, "demo", "web-abcde")
        s["endpoints"][0] = endpoint("10.1.0.1", ready=False)
        await cl["a"].replace(ENDPOINT_SLICES, s)
        await eventually(lambda: kept.ready is False, within=1.0)
        assert ("a", "10.1.0.1", 8080) not in addrs(mgr)
        # A Service deleted in one cluster takes its endpoints with it.
        await cl["b"].delete(SERVICES, "demo", "web")
        await eventually(lambda: addrs(mgr) == {("a", "10.1.0.3", 8080)}, within=1.0)


async def test_new_service_and_new_cluster_endpoints_appear():
    async with members("a", "b") as (cl, mgr):
        await mgr.start()
        mgr.sync({WEB: BackendPolicy()})
        assert mgr.pick(WEB, REQ) is None
        await web(cl["b"], ["10.2.0.7"])
        await eventually(lambda: addrs(mgr) == {("b", "10.2.0.7", 8080)}, within=1.0)


async def test_policy_change_applies_to_the_same_backend_ref_object():
    async with members("a", "b") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1"])
        await web(cl["b"], ["10.2.0.1"])
        await mgr.start()
        mgr.sync({WEB: BackendPolicy()})
        assert {ep.cluster for ep in (mgr.pick(WEB, REQ) for _ in range(4))} == {"a", "b"}
        mgr.sync({WEB: BackendPolicy(cluster_weights={"b": 1})})
        assert {ep.cluster for ep in (mgr.pick(WEB, REQ) for _ in range(4))} == {"b"}
        assert mgr.summary(WEB)["cluster_weights"] == {"b": 1}


async def test_two_backends_picked_in_turn_each_follow_their_own_policy_changes():
    """A request and its mirror copy pick two backends in turn: a policy change to either
    (the older of the two the manager remembers, or the newer) applies at once."""
    other = BackendRef("demo", "web", "http")
    async with members("a", "b") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1"])
        await web(cl["b"], ["10.2.0.1"])
        await mgr.start()
        mgr.sync({WEB: BackendPolicy(), other: BackendPolicy()})

        def turns() -> tuple[set[str], set[str]]:
            picks = [(mgr.pick(WEB, REQ), mgr.pick(other, REQ)) for _ in range(4)]
            return {w.cluster for w, _ in picks}, {o.cluster for _, o in picks}

        assert turns() == ({"a", "b"}, {"a", "b"})
        mgr.sync({WEB: BackendPolicy(), other: BackendPolicy(cluster_weights={"b": 1})})
        assert turns() == ({"a", "b"}, {"b"})
        mgr.sync({WEB: BackendPolicy(cluster_weights={"a": 1}), other: BackendPolicy(cluster_weights={"b": 1})})
        assert turns() == ({"a"}, {"b"})


async def test_backend_not_in_the_route_table_is_tracked_on_demand():
    async with members("a") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1"])
        await mgr.start()
        mgr.sync({})
        assert addrs(mgr) == {("a", "10.1.0.1", 8080)}
        assert WEB in mgr.backends()
        ep = mgr.pick(WEB, REQ)
        mgr.sync({})  # the next table without it: forgotten again
        assert WEB not in mgr.backends() and mgr.describe(WEB) == []
        mgr.report(ep, "http_5xx", 500)  # a late report for a forgotten endpoint is dropped
        assert mgr.outlier.consecutive(ep) == (0, 0)


async def test_unreachable_member_keeps_serving_its_last_known_endpoints():
    async with members("a", "b") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1"])
        await web(cl["b"], ["10.2.0.1"])
        await mgr.start()
        mgr.sync({WEB: BackendPolicy()})
        cl["b"].set_reachable(False)
        await web(cl["a"], ["10.1.0.2"], name="web-second")
        await eventually(lambda: len(addrs(mgr)) == 3, within=1.0)
        assert ("b", "10.2.0.1", 8080) in addrs(mgr)


def bookkeeping_is_whole(mgr: UpstreamManager) -> None:
    """What the manager keeps as bases change, recounted from scratch: the catalog interns
    exactly the endpoints of some base, `_held` counts their bases, `_refs_of_ep` names
    exactly the backends whose balancers hold each, and only those are health-checked."""
    in_bases = Counter(ep for eps in mgr._bases.values() for ep in eps)
    assert dict(mgr._held) == dict(in_bases)
    assert set(mgr.catalog._pool.values()) == set(in_bases)
    holders: dict = {}
    for ref, bal in mgr._balancers.items():
        for ep in bal.endpoints:
            holders.setdefault(ep, set()).add(ref)
    assert {ep: refs for ep, refs in mgr._refs_of_ep.items()} == holders
    assert mgr._orphans == []


async def test_endpoint_bookkeeping_stays_whole_as_slices_and_tables_change():
    """Endpoints come and go one Service at a time (only they are looked at, not the fleet),
    pods are shared by two Services, backends narrow to a cluster or leave the table."""
    api = BackendRef("demo", "api", 80)
    web_a = BackendRef("demo", "web", 80, cluster="a")
    async with members("a", "b") as (cl, mgr):
        await web(cl["a"], ["10.1.0.1", "10.1.0.2"])
        await web(cl["b"], ["10.2.0.1"])
        await cl["a"].create(SERVICES, service("api", "demo"))  # the same pods as web
        await cl["a"].create(ENDPOINT_SLICES, source_slice("api", "demo", [endpoint("10.1.0.2")]))
        await mgr.start()
        mgr.sync({WEB: BackendPolicy(), api: BackendPolicy(), web_a: BackendPolicy()})
        bookkeeping_is_whole(mgr)
        shared = mgr.catalog.interned("a", "10.1.0.2", 8080)
        assert shared is not None and mgr._held[shared] == 2
        # a health or ejection change rebuilds balancers from unchanged bases: nothing moves
        mgr._rebuild(list(mgr._balancers), time.monotonic())
        bookkeeping_is_whole(mgr)
        # web loses the shared pod; api still holds it: the same Endpoint, not forgotten
        await cl["a"].patch(ENDPOINT_SLICES, "demo", "web-abcde",
                            {"endpoints": [endpoint("10.1.0.1"), endpoint("10.1.0.3")]})
        await eventually(lambda: ("a", "10.1.0.3", 8080) in addrs(mgr), within=1.0)
        bookkeeping_is_whole(mgr)
        assert mgr.catalog.interned("a", "10.1.0.2", 8080) is shared and mgr._held[shared] == 1
        # api's pod goes too: forgotten everywhere
        await cl["a"].patch(ENDPOINT_SLICES, "demo", "api-abcde", {"endpoints": [endpoint("10.1.0.9")]})
        await eventually(lambda: addrs(mgr, api) == {("a", "10.1.0.9", 8080)}, within=1.0)
        bookkeeping_is_whole(mgr)
        assert mgr.catalog.interned("a", "10.1.0.2", 8080) is None
        # a table without the cluster-narrowed backend, then without api
        mgr.sync({WEB: BackendPolicy(), api: BackendPolicy()})
        bookkeeping_is_whole(mgr)
        mgr.sync({WEB: BackendPolicy()})
        bookkeeping_is_whole(mgr)
        assert mgr.catalog.interned("a", "10.1.0.9", 8080) is None
        # only the cluster-a backend: b's endpoint stays in the base but no balancer holds it
        mgr.sync({web_a: BackendPolicy()})
        bookkeeping_is_whole(mgr)
        orphan = mgr.catalog.interned("b", "10.2.0.1", 8080)
        assert orphan is not None and orphan not in mgr._refs_of_ep
        mgr.sync({WEB: BackendPolicy()})
        bookkeeping_is_whole(mgr)
        # cluster b empties its slice: its endpoint is forgotten, a's stay
        await cl["b"].patch(ENDPOINT_SLICES, "demo", "web-abcde", {"endpoints": []})
        await eventually(lambda: {c for c, _, _ in addrs(mgr)} == {"a"}, within=1.0)
        bookkeeping_is_whole(mgr)
        assert mgr.catalog.interned("b", "10.2.0.1", 8080) is None
        # a backend tracked on demand (a mirror's), then the table drops everything
        mgr.pick(api, REQ)
        bookkeeping_is_whole(mgr)
        mgr.sync({})
        bookkeeping_is_whole(mgr)
        assert mgr.catalog._pool == {}
