"""Answers follow the catalog (issue 3 item 9): changes in the served cluster show in the
next answer within 100 ms, through the answer cache; SERVFAIL until the first sync; and
the whole chain with the real controller writing the imports."""

from __future__ import annotations

import asyncio
import copy
import time

import aiohttp
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import pytest
from fleetkit import endpoint, eventually, export, running_fleet, source_slice
from test_dns_zone import MYSQL, NAMESPACES, OBJECTS, Z, ep, imported_slice, port, service_import

from clusterset_dns.app import DnsApp
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import (
    ENDPOINT_SLICES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
)
from mcs_controller.access.resources import (
    NAMESPACES as NS_RESOURCE,
)

#: The issue's bound for the embedded store: informer event -> next answer.
WITHIN = 0.1


async def cluster_with_fixture(name: str = "c2") -> EmbeddedCluster:
    cluster = EmbeddedCluster(name, bookmark_interval=0)
    for ns in NAMESPACES:
        await cluster.create(NS_RESOURCE, {"metadata": {"name": ns}})
    for res, obj in OBJECTS:
        await cluster.create(res, copy.deepcopy(obj))
    return cluster


async def started(cluster: EmbeddedCluster, **kwargs) -> DnsApp:
    app = DnsApp(cluster, **{"listen": ("127.0.0.1", 0), "admin": None, **kwargs})
    await app.start()
    return app


async def ask(app: DnsApp, name: str, qtype: str = "A", *, edns: bool = False, tcp: bool = False):
    q = dns.message.make_query(name, qtype, use_edns=0 if edns else False)
    host, port_ = app.address
    if tcp:
        return await dns.asyncquery.tcp(q, host, port=port_, timeout=2)
    return await dns.asyncquery.udp(q, host, port=port_, timeout=2)


def addresses(reply) -> set[str]:
    return {rd.address for rrset in reply.answer for rd in rrset}


async def changes_within(app: DnsApp, check, variants) -> float:
    """Poll every variant until `check(reply)` holds for all; returns the seconds it took."""
    start = time.monotonic()
    while True:
        replies = [await ask(app, *args, **kw) for args, kw in variants]
        if all(check(r) for r in replies):
            return time.monotonic() - start
        if time.monotonic() - start > 2.0:
            raise AssertionError(f"not changed: {[r.to_text() for r in replies]}")
        await asyncio.sleep(0.002)


@pytest.fixture
async def app():
    cluster = await cluster_with_fixture()
    a = await started(cluster)
    await a.wait_ready(5)
    try:
        yield a
    finally:
        await a.stop()


DB = f"db.demo.svc.{Z}"
#: Each name asked as plain UDP, EDNS UDP and TCP: three cache entries that must all follow.
VARIANTS = [((DB,), {}), ((DB,), {"edns": True}), ((DB,), {"tcp": True})]


async def test_an_endpoint_turned_not_ready_leaves_the_next_answer(app):
    for (args, kw) in VARIANTS:  # warm every variant of the cache
        assert "10.2.0.5" in addresses(await ask(app, *args, **kw))
    _, hits = app.responder.stats()
    assert hits >= 0 and app.responder.entries >= 2
    cluster = app.client
    sl = await cluster.get(ENDPOINT_SLICES, "demo", "db-c2-ipv4-0")
    sl["endpoints"][0]["conditions"] = {"ready": False}  # mysql-0 in c2: 10.2.0.5
    await cluster.replace(ENDPOINT_SLICES, sl)
    took = await changes_within(app, lambda r: "10.2.0.5" not in addresses(r) and addresses(r), VARIANTS)
    assert took < WITHIN
    pod = await ask(app, f"mysql-0.c2.db.demo.svc.{Z}")
    assert pod.rcode() == dns.rcode.NXDOMAIN
    ack = await ask(app, f"mysql-0.db.demo.svc.{Z}")
    assert addresses(ack) == {"10.1.0.5"}


async def test_an_added_endpoint_and_a_deleted_slice_show_at_once(app):
    cluster = app.client
    assert (await ask(app, f"mysql-7.c2.db.demo.svc.{Z}")).rcode() == dns.rcode.NXDOMAIN  # cached NX
    sl = await cluster.get(ENDPOINT_SLICES, "demo", "db-c2-ipv4-0")
    sl["endpoints"].append(ep("10.2.0.7", "mysql-7"))
    await cluster.replace(ENDPOINT_SLICES, sl)
    took = await changes_within(
        app, lambda r: addresses(r) == {"10.2.0.7"}, [((f"mysql-7.c2.db.demo.svc.{Z}",), {})])
    assert took < WITHIN
    srv = await ask(app, f"_mysql._tcp.db.demo.svc.{Z}", "SRV", tcp=True)
    assert f"mysql-7.c2.db.demo.svc.{Z}." in srv.to_text()
    await cluster.delete(ENDPOINT_SLICES, "demo", "db-c2-ipv4-0")
    await changes_within(app, lambda r: not addresses(r) & {"10.2.0.5", "10.2.0.7"}, VARIANTS)


async def test_the_last_ready_endpoint_going_makes_a_headless_name_nxdomain(app):
    cluster = app.client
    name = f"dupname.demo.svc.{Z}"
    assert addresses(await ask(app, name)) == {"10.1.3.1", "10.1.3.2"}
    sl = await cluster.get(ENDPOINT_SLICES, "demo", "dupname-c1-ipv4-0")
    for e in sl["endpoints"]:
        e["conditions"] = {"ready": False}
    await cluster.replace(ENDPOINT_SLICES, sl)
    await changes_within(app, lambda r: r.rcode() == dns.rcode.NXDOMAIN, [((name,), {})])  # D10


async def test_imports_coming_and_going_flip_nxdomain_and_the_namespace(app):
    cluster = app.client
    serial = app.catalog.serial
    app.source.clock = lambda: float(serial)  # the SOA serial stays: per-name invalidation only
    name = f"fresh.demo.svc.{Z}"
    assert (await ask(app, name)).rcode() == dns.rcode.NXDOMAIN  # cached negative
    await cluster.create(SERVICE_IMPORTS, service_import("fresh", "demo", "ClusterSetIP",
                                                         [port("http", 80)], ["10.96.0.99"]))
    took = await changes_within(app, lambda r: addresses(r) == {"10.96.0.99"}, [((name,), {})])
    assert took < WITHIN
    imp = await cluster.get(SERVICE_IMPORTS, "demo", "fresh")
    imp["spec"]["ips"] = ["10.96.0.98"]  # a new VIP
    await cluster.replace(SERVICE_IMPORTS, imp)
    await changes_within(app, lambda r: addresses(r) == {"10.96.0.98"}, [((name,), {})])
    # The last import of a namespace going: <ns>.svc goes from NODATA to NXDOMAIN.
    ns_name = f"other.svc.{Z}"
    before = await ask(app, ns_name)
    assert before.rcode() == dns.rcode.NOERROR and before.authority
    await cluster.delete(SERVICE_IMPORTS, "other", "only")
    await changes_within(app, lambda r: r.rcode() == dns.rcode.NXDOMAIN,
                         [((ns_name,), {}), ((f"only.other.svc.{Z}",), {"edns": True})])
    assert app.catalog.serial == serial


async def test_negative_answers_carry_the_serial_of_the_last_change(app):
    neg = f"nosuch.demo.svc.{Z}"
    first = (await ask(app, neg)).authority[0][0].serial
    assert first == app.catalog.serial > 1_700_000_000
    app.source.clock = lambda: first + 1000.0  # the next change happens "later"
    await app.client.create(SERVICE_IMPORTS, service_import("later", "demo", "ClusterSetIP",
                                                            [port("http", 80)], ["10.96.0.77"]))
    await changes_within(app, lambda r: (r.answer or r.authority)[0][0].serial == first + 1000,
                         [((neg,), {}), ((neg,), {"edns": True}), ((Z, "SOA"), {"tcp": True})])


async def test_metrics_follow_the_catalog(app):
    def sample(name: str) -> float | None:
        return app.registry.get_sample_value(f"clusterset_dns_{name}")

    assert sample("catalog_services") == 11 and sample("catalog_endpoints") == 110
    await app.client.delete(SERVICE_IMPORTS, "demo", "big")
    await eventually(lambda: sample("catalog_services") == 10, within=1)
    assert sample("catalog_endpoints") == 10 and sample("synced") == 1


async def test_servfail_until_the_first_sync_then_answers():
    cluster = await cluster_with_fixture()
    cluster.set_reachable(False)  # the informers cannot list yet
    app = await started(cluster, admin=("127.0.0.1", 0))
    try:
        reply = await ask(app, f"web.demo.svc.{Z}")
        assert reply.rcode() == dns.rcode.SERVFAIL and reply.flags & dns.flags.AA  # D31
        assert reply.authority and reply.answer == []
        assert (await ask(app, ".", "NS")).rcode() == dns.rcode.REFUSED  # health check answered
        assert not app.ready and app.responder.entries == 0  # nothing negative was kept
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{app.admin_port}"
            async with http.get(url + "/readyz") as resp:
                assert resp.status == 503
            async with http.get(url + "/healthz") as resp:
                assert resp.status == 200
            cluster.set_reachable(True)
            await app.wait_ready(5)
            async with http.get(url + "/readyz") as resp:
                assert resp.status == 200
        assert addresses(await ask(app, f"web.demo.svc.{Z}")) == {"10.96.0.10"}
    finally:
        await app.stop()


async def test_answers_survive_an_api_outage_from_the_cached_catalog(app):
    app.client.set_reachable(False)
    await asyncio.sleep(0.05)
    assert addresses(await ask(app, f"web.demo.svc.{Z}")) == {"10.96.0.10"}
    app.client.set_reachable(True)


async def test_stop_closes_both_listeners():
    cluster = await cluster_with_fixture()
    app = await started(cluster)
    await app.wait_ready(5)
    host, port_ = app.address
    await app.stop()
    with pytest.raises((ConnectionError, OSError)):
        await asyncio.wait_for(asyncio.open_connection(host, port_), 1)
    q = dns.message.make_query(f"web.demo.svc.{Z}", "A")
    with pytest.raises(dns.exception.Timeout):
        await dns.asyncquery.udp(q, host, port=port_, timeout=0.2)


# ---------------------------------------------------------------------------- with the controller


async def test_dns_serves_what_the_controller_imports_and_follows_readiness():
    """c1 exports a headless StatefulSet-like service; c2's DNS answers from the imports."""
    async with running_fleet(names=("c1", "c2")) as fleet:
        c1 = fleet["c1"]
        await c1.create(SERVICES, {"metadata": {"name": "mysql", "namespace": "demo"},
                                   "spec": {"clusterIP": "None", "selector": {"app": "mysql"},
                                            "ports": [{"name": "mysql", "port": 3306}]}})
        await fleet.exported("c1", "web", "demo", [endpoint("10.1.0.9")])
        await c1.create(ENDPOINT_SLICES, source_slice(
            "mysql", "demo", [endpoint("10.1.0.5", hostname="mysql-0"), endpoint("10.1.0.6", hostname="mysql-1")],
            ports=[{"name": "mysql", "port": 3306, "protocol": "TCP"}]))
        await c1.create(SERVICE_EXPORTS, export("mysql", "demo"))
        dns_app = await started(fleet["c2"])
        try:
            await dns_app.wait_ready(5)

            async def resolved():
                a = await ask(dns_app, f"mysql-0.c1.mysql.demo.svc.{Z}")
                web = await ask(dns_app, f"web.demo.svc.{Z}")
                return addresses(a) == {"10.1.0.5"} and addresses(web)

            await eventually(resolved, within=5)
            imp = await fleet["c2"].get(SERVICE_IMPORTS, "demo", "web")
            web = await ask(dns_app, f"web.demo.svc.{Z}")
            assert addresses(web) == set(imp["spec"]["ips"])  # D1: the import's VIP
            srv = await ask(dns_app, f"_mysql._tcp.mysql.demo.svc.{Z}", "SRV", edns=True)
            assert sorted(rd.target.to_text() for rrset in srv.answer for rd in rrset) == [
                f"mysql-0.c1.mysql.demo.svc.{Z}.", f"mysql-1.c1.mysql.demo.svc.{Z}."]
            # mysql-1 stops being ready in c1: gone from c2's answers once mirrored.
            listed = await c1.list(ENDPOINT_SLICES, "demo", "kubernetes.io/service-name=mysql")
            src = listed.items[0]
            src["endpoints"][1]["conditions"] = {"ready": False, "serving": False, "terminating": True}
            await c1.replace(ENDPOINT_SLICES, src)

            async def dropped():
                r = await ask(dns_app, f"mysql.demo.svc.{Z}")
                return addresses(r) == {"10.1.0.5"}

            await eventually(dropped, within=5)
        finally:
            await dns_app.stop()


async def test_headless_import_with_ipv6_and_two_label_cluster_ids():
    cluster = EmbeddedCluster("c9", bookmark_interval=0)
    await cluster.create(NS_RESOURCE, {"metadata": {"name": "demo"}})
    await cluster.create(SERVICE_IMPORTS, service_import("db", "demo", "Headless", MYSQL))
    await cluster.create(ENDPOINT_SLICES, imported_slice(
        "db", "demo", "west.prod", [ep("fd00::9", "mysql-0")], family="IPv6", ports=MYSQL))
    app = await started(cluster)
    try:
        await app.wait_ready(5)
        reply = await ask(app, f"MySQL-0.West.Prod.db.demo.svc.{Z}", "AAAA", edns=True)
        assert addresses(reply) == {"fd00::9"}
        assert (await ask(app, f"west.prod.db.demo.svc.{Z}", "AAAA")).rcode() == dns.rcode.NXDOMAIN
    finally:
        await app.stop()
