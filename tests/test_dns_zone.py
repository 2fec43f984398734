"""The clusterset.local rules (digest section 3: D1-D32, G1-G11) through the pure resolver.

The fixture (`OBJECTS`) and the rule table (`ROWS`) are shared with test_dns_server.py,
which asks the same questions through real sockets; keep them importable.
"""

from __future__ import annotations

import dns.edns
import dns.message
import dns.rdatatype
import pytest

from clusterset_dns.catalog import Catalog
from clusterset_dns.zone import (
    ANY,
    AXFR,
    NOERROR,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    SOA,
    Answer,
    Soa,
    Srv,
    Zone,
    parse_name,
)
from mcs_controller.access.resources import ENDPOINT_SLICES, SERVICE_IMPORTS
from mcs_controller.model import labels as L

Z = "clusterset.local"
GLUE = "127.0.0.1"  # the address the server tests listen on: the apex NS glue


# ---------------------------------------------------------------------------- fixture objects


def port(name: str, number: int, protocol: str = "TCP") -> dict:
    out = {"port": number, "protocol": protocol}
    if name:
        out["name"] = name
    return out


def service_import(name: str, ns: str, kind: str, ports: list[dict], ips: list[str] | None = None) -> dict:
    spec: dict = {"type": kind, "ports": ports}
    if ips is not None:
        spec["ips"] = ips
    return {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def ep(ip: str, hostname: str | None = None, ready: bool | None = True) -> dict:
    out: dict = {"addresses": [ip]}
    if hostname:
        out["hostname"] = hostname
    if ready is not None:
        out["conditions"] = {"ready": ready}
    return out


def imported_slice(svc: str, ns: str, cluster: str, endpoints: list[dict], *,
                   family: str = "IPv4", ports: list[dict] | None = None, index: int = 0) -> dict:
    """An imported slice as mcs_controller writes it (labels of tests/test_controller.py)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-{cluster.replace('.', '-')}-{family.lower()}-{index}", "namespace": ns,
            "labels": {L.LABEL_MCS_SERVICE_NAME: svc, L.LABEL_SOURCE_CLUSTER: cluster,
                       L.LABEL_MANAGED_BY: L.CONTROLLER_NAME, L.LABEL_SERVICE_NAME: f"amcs-{svc}"},
        },
        "addressType": family,
        "ports": ports if ports is not None else [port("http", 8080)],
        "endpoints": endpoints,
    }


MYSQL = [port("mysql", 3306)]
BIG_COUNT = 100

IMPORTS = [
    service_import("web", "demo", "ClusterSetIP",
                   [port("http", 80), port("metrics", 9090), port("", 8443)], ["10.96.0.10"]),
    service_import("dual", "demo", "ClusterSetIP", [port("http", 80)], ["10.96.0.11", "fd00::11"]),
    service_import("v6only", "demo", "ClusterSetIP", [port("http", 80)], ["fd00::12"]),
    service_import("empty", "demo", "ClusterSetIP", [port("http", 80)], ["10.96.0.13"]),
    service_import("novip", "demo", "ClusterSetIP", [port("http", 80)], []),
    service_import("hello", "demo", "ClusterSetIP", [port("tcp", 42), port("udp", 42, "UDP")],
                   ["10.96.0.14"]),
    service_import("db", "demo", "Headless", MYSQL),
    service_import("gone", "demo", "Headless", MYSQL),
    service_import("dupname", "demo", "Headless", [port("http", 80)]),
    service_import("big", "demo", "Headless", [port("http", 80)]),
    service_import("only", "other", "ClusterSetIP", [port("http", 80)], ["10.96.1.1"]),
]

SLICES = [
    imported_slice("web", "demo", "c1", [ep("10.1.1.1"), ep("10.1.1.2", ready=False)]),
    imported_slice("db", "demo", "c1", [
        ep("10.1.0.5", "mysql-0"), ep("10.1.0.6", "mysql-1", ready=None), ep("10.1.0.7"),
        ep("10.1.0.8", "mysql-2", ready=False),
    ], ports=MYSQL),
    imported_slice("db", "demo", "c1", [ep("fd00::1:5", "mysql-0"), ep("fd00::1:7")],
                   family="IPv6", ports=MYSQL),
    imported_slice("db", "demo", "c2", [ep("10.2.0.5", "mysql-0"), ep("10.1.0.6", "mysql-1")],
                   ports=MYSQL),
    imported_slice("db", "demo", "east.prod", [ep("10.3.0.9", "mysql-9")], ports=MYSQL),
    imported_slice("gone", "demo", "c1", [ep("10.1.9.9", "g-0", ready=False)], ports=MYSQL),
    imported_slice("dupname", "demo", "c1", [ep("10.1.3.1", "dup"), ep("10.1.3.2", "dup")],
                   ports=[port("http", 80)]),
    imported_slice("big", "demo", "c1", [ep(f"10.5.0.{i}") for i in range(1, BIG_COUNT + 1)],
                   ports=[port("http", 80)]),
]

OBJECTS = [(SERVICE_IMPORTS, o) for o in IMPORTS] + [(ENDPOINT_SLICES, o) for o in SLICES]
NAMESPACES = ("demo", "other")


def build_catalog(serial: int = 1_700_000_000) -> Catalog:
    cat = Catalog()
    for obj in IMPORTS:
        cat.set_import(obj, serial)
    for obj in SLICES:
        cat.set_slice(obj, serial)
    return cat


# ---------------------------------------------------------------------------- the rule table

NODATA = "NODATA"  # NOERROR, empty answer, SOA in authority
DB_SRV = [f"SRV 0 12 3306 {t}.db.demo.svc.{Z}" for t in (
    "mysql-0.c1", "mysql-1.c1", "10-1-0-7.c1", "fd00--1-7.c1", "mysql-0.c2", "mysql-1.c2",
    "mysql-9.east.prod")]
DB_EXTRA = [f"{o}.db.demo.svc.{Z} {r}" for o, r in (
    ("mysql-0.c1", "A 10.1.0.5"), ("mysql-1.c1", "A 10.1.0.6"), ("10-1-0-7.c1", "A 10.1.0.7"),
    ("mysql-0.c1", "AAAA fd00::1:5"), ("fd00--1-7.c1", "AAAA fd00::1:7"),
    ("mysql-0.c2", "A 10.2.0.5"), ("mysql-1.c2", "A 10.1.0.6"), ("mysql-9.east.prod", "A 10.3.0.9"))]

#: (rule, qname relative to the zone ("" = apex; a trailing dot = absolute), qtype,
#:  rcode or NODATA, answer records as "TYPE rdata" (sorted compare), additional or None)
ROWS: list[tuple[str, str, str, str, list[str] | None, list[str] | None]] = [
    ("D1", "web.demo.svc", "A", "NOERROR", ["A 10.96.0.10"], []),
    ("D2", "dual.demo.svc", "AAAA", "NOERROR", ["AAAA fd00::11"], []),
    ("D2-dual-A", "dual.demo.svc", "A", "NOERROR", ["A 10.96.0.11"], []),
    ("D2-v6only", "v6only.demo.svc", "AAAA", "NOERROR", ["AAAA fd00::12"], []),
    ("D2-v6only-A", "v6only.demo.svc", "A", NODATA, None, None),
    ("D3", "web.demo.svc", "AAAA", NODATA, None, None),
    ("D4", "empty.demo.svc", "A", "NOERROR", ["A 10.96.0.13"], []),
    ("D4-notready-vip", "web.demo.svc", "A", "NOERROR", ["A 10.96.0.10"], []),
    ("D5", "novip.demo.svc", "A", NODATA, None, None),
    ("D6", "_http._tcp.web.demo.svc", "SRV", "NOERROR", [f"SRV 0 100 80 web.demo.svc.{Z}"],
     [f"web.demo.svc.{Z} A 10.96.0.10"]),
    ("D6-second-port", "_metrics._tcp.web.demo.svc", "SRV", "NOERROR",
     [f"SRV 0 100 9090 web.demo.svc.{Z}"], [f"web.demo.svc.{Z} A 10.96.0.10"]),
    ("D6-case", "_HTTP._Tcp.web.demo.svc", "SRV", "NOERROR", [f"SRV 0 100 80 web.demo.svc.{Z}"], None),
    ("D6-dual-extra", "_http._tcp.dual.demo.svc", "SRV", "NOERROR", [f"SRV 0 100 80 dual.demo.svc.{Z}"],
     [f"dual.demo.svc.{Z} A 10.96.0.11", f"dual.demo.svc.{Z} AAAA fd00::11"]),
    ("D6-udp", "_udp._udp.hello.demo.svc", "SRV", "NOERROR", [f"SRV 0 100 42 hello.demo.svc.{Z}"], None),
    ("D6-srv-name-A", "_http._tcp.web.demo.svc", "A", NODATA, None, None),
    ("D7-no-such-port", "_https._tcp.web.demo.svc", "SRV", "NXDOMAIN", None, None),
    ("D7-wrong-proto", "_http._udp.web.demo.svc", "SRV", "NXDOMAIN", None, None),
    ("D7-proto-ent", "_tcp.web.demo.svc", "SRV", NODATA, None, None),
    ("D7-proto-ent-missing", "_sctp.web.demo.svc", "A", "NXDOMAIN", None, None),
    ("D8-bare", "web.demo.svc", "SRV", "NOERROR",
     [f"SRV 0 33 {p} web.demo.svc.{Z}" for p in (80, 9090, 8443)], [f"web.demo.svc.{Z} A 10.96.0.10"]),
    ("D8-dedup", "hello.demo.svc", "SRV", "NOERROR", [f"SRV 0 50 42 hello.demo.svc.{Z}"], None),
    ("D9-A", "db.demo.svc", "A", "NOERROR",
     [f"A {ip}" for ip in ("10.1.0.5", "10.1.0.6", "10.1.0.7", "10.2.0.5", "10.3.0.9")], []),
    ("D9-AAAA", "db.demo.svc", "AAAA", "NOERROR", ["AAAA fd00::1:5", "AAAA fd00::1:7"], []),
    ("D9-big", "big.demo.svc", "A", "NOERROR", [f"A 10.5.0.{i}" for i in range(1, BIG_COUNT + 1)], []),
    ("D10", "gone.demo.svc", "A", "NXDOMAIN", None, None),
    ("D10-srv", "_mysql._tcp.gone.demo.svc", "SRV", "NXDOMAIN", None, None),
    ("D10-pod", "g-0.c1.gone.demo.svc", "A", "NXDOMAIN", None, None),
    ("D11", "mysql-0.c1.db.demo.svc", "A", "NOERROR", ["A 10.1.0.5"], []),
    ("D11-AAAA", "mysql-0.c1.db.demo.svc", "AAAA", "NOERROR", ["AAAA fd00::1:5"], []),
    ("D11-other-cluster", "mysql-0.c2.db.demo.svc", "A", "NOERROR", ["A 10.2.0.5"], []),
    ("D11-ready-unset", "mysql-1.c1.db.demo.svc", "A", "NOERROR", ["A 10.1.0.6"], []),
    ("D11-not-ready", "mysql-2.c1.db.demo.svc", "A", "NXDOMAIN", None, None),
    ("D11-dup-hostname", "dup.c1.dupname.demo.svc", "A", "NOERROR", ["A 10.1.3.1", "A 10.1.3.2"], []),
    ("D11-no-AAAA", "mysql-1.c1.db.demo.svc", "AAAA", NODATA, None, None),
    ("D12-v4", "10-1-0-7.c1.db.demo.svc", "A", "NOERROR", ["A 10.1.0.7"], []),
    ("D12-v6", "fd00--1-7.c1.db.demo.svc", "AAAA", "NOERROR", ["AAAA fd00::1:7"], []),
    ("D13-bogus-host", "bogus.c1.db.demo.svc", "A", "NXDOMAIN", None, None),
    ("D13-bogus-cluster", "mysql-0.c9.db.demo.svc", "A", "NXDOMAIN", None, None),
    ("D14-headless", "c1.db.demo.svc", "A", "NXDOMAIN", None, None),
    ("D14-clustersetip", "c1.web.demo.svc", "A", "NXDOMAIN", None, None),
    ("D14-two-label-id", "east.prod.db.demo.svc", "A", "NXDOMAIN", None, None),
    ("D14-srv", "c2.db.demo.svc", "SRV", "NXDOMAIN", None, None),
    ("D15-ack", "mysql-0.db.demo.svc", "A", "NOERROR", ["A 10.1.0.5", "A 10.2.0.5"], []),
    ("D15-ack-AAAA", "mysql-0.db.demo.svc", "AAAA", "NOERROR", ["AAAA fd00::1:5"], []),
    ("D15-ack-dashed", "10-1-0-7.db.demo.svc", "A", "NOERROR", ["A 10.1.0.7"], []),
    ("D15-ack-dup", "dup.dupname.demo.svc", "A", "NOERROR", ["A 10.1.3.1", "A 10.1.3.2"], []),
    ("D15-ack-not-ready", "mysql-2.db.demo.svc", "A", "NXDOMAIN", None, None),
    ("D16", "_mysql._tcp.db.demo.svc", "SRV", "NOERROR", DB_SRV, DB_EXTRA),
    ("D16-no-port", "_http._tcp.db.demo.svc", "SRV", "NXDOMAIN", None, None),
    ("D17", "db.demo.svc", "SRV", "NOERROR", DB_SRV, DB_EXTRA),
    ("D17-dedup", "dupname.demo.svc", "SRV", "NOERROR", [f"SRV 0 50 80 dup.c1.dupname.demo.svc.{Z}"],
     [f"dup.c1.dupname.demo.svc.{Z} A 10.1.3.1", f"dup.c1.dupname.demo.svc.{Z} A 10.1.3.2"]),
    ("D18", "x.c1.web.demo.svc", "A", "NXDOMAIN", None, None),
    ("D19", "nosuch.demo.svc", "A", "NXDOMAIN", None, None),
    ("D19-srv", "_http._tcp.nosuch.demo.svc", "SRV", "NXDOMAIN", None, None),
    ("D20", "web.nons.svc", "A", "NXDOMAIN", None, None),
    ("D21-svc", "svc", "A", NODATA, None, None),
    ("D21-pod", "pod", "A", NODATA, None, None),
    ("D21-ns", "demo.svc", "A", NODATA, None, None),
    ("D21-other-ns", "other.svc", "A", NODATA, None, None),
    ("D21-no-ns", "nons.svc", "A", "NXDOMAIN", None, None),
    ("D22", "a.b.pod", "A", "NXDOMAIN", None, None),
    ("D23-not-svc", "web.demo.foo", "A", "NXDOMAIN", None, None),
    ("D23-too-long", "w.x.y.z.db.demo.svc", "A", "NXDOMAIN", None, None),
    ("D23-top", "foo", "A", "NXDOMAIN", None, None),
    ("D24", "dns-version", "TXT", "NOERROR", ['TXT "1.0.0"'], []),
    ("D24-A", "dns-version", "A", NODATA, None, None),
    ("D25-TXT", "web.demo.svc", "TXT", NODATA, None, None),
    ("D25-MX", "db.demo.svc", "MX", NODATA, None, None),
    ("D25-CNAME", "mysql-0.c1.db.demo.svc", "CNAME", NODATA, None, None),
    ("D26", "nosuch.demo.svc", "TXT", "NXDOMAIN", None, None),
    ("D27", "", "SOA", "NOERROR", None, []),
    ("D28", "web.demo.svc", "SOA", NODATA, None, None),
    ("D29", "", "NS", "NOERROR", [f"NS ns.dns.{Z}"], [f"ns.dns.{Z} A {GLUE}"]),
    ("D29-glue", "ns.dns", "A", "NOERROR", [f"A {GLUE}"], []),
    ("D29-ent", "dns", "A", NODATA, None, None),
    ("D29-ns-not-apex", "web.demo.svc", "NS", NODATA, None, None),
    ("D30", "10.0.96.10.in-addr.arpa.", "PTR", "REFUSED", None, None),
    ("D32", "web.demo.svc.cluster.local.", "A", "REFUSED", None, None),
    ("G10-root", ".", "NS", "REFUSED", None, None),
    ("G10-other-zone", "example.com.", "A", "REFUSED", None, None),
    ("G10-zone-suffix-lookalike", "notclusterset.local.", "A", "REFUSED", None, None),
    ("G2-other-tld", "web.demo.svc.clusterset.local.cluster.local.", "A", "REFUSED", None, None),
]


def absolute(qname: str) -> str:
    if qname.endswith("."):
        return qname
    return f"{qname}.{Z}." if qname else f"{Z}."


# ---------------------------------------------------------------------------- helpers


def rr_text(rr) -> str:
    """A zone RR as "TYPE rdata" (the form the table uses)."""
    data = rr.rdata
    kind = dns.rdatatype.to_text(rr.rtype)
    if isinstance(data, Srv):
        return f"SRV {data.priority} {data.weight} {data.port} {'.'.join(data.target)}"
    if isinstance(data, Soa):
        return f"SOA {'.'.join(data.mname)} {'.'.join(data.rname)} {data.serial}"
    if isinstance(data, tuple):
        return f"{kind} {'.'.join(data)}"
    if kind == "TXT":
        return f'TXT "{data}"'
    return f"{kind} {data}"


def check_soa_rr(name: str, ttl: int, text: str, *, zone_ttl: int = 5, serial: int | None = None) -> None:
    """G4: owner zone, TTL min(ttl, 300), ns.dns/hostmaster, timers 7200 1800 86400 <ttl>."""
    assert name.lower().rstrip(".") == Z
    assert ttl == min(zone_ttl, 300)
    fields = text.lower().split()  # names compress into the question: its spelling
    assert fields[0].rstrip(".") == f"ns.dns.{Z}" and fields[1].rstrip(".") == f"hostmaster.{Z}"
    assert fields[3:] == ["7200", "1800", "86400", str(zone_ttl)]
    if serial is not None:
        assert int(fields[2]) == serial


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog()


@pytest.fixture(scope="module")
def zone() -> Zone:
    return Zone(Z, 5, ns_addresses=(GLUE,))


def resolve(zone: Zone, cat: Catalog, qname: str, qtype: str) -> Answer:
    return zone.resolve(cat, parse_name(absolute(qname)), dns.rdatatype.from_text(qtype))


# ---------------------------------------------------------------------------- table-driven rules


@pytest.mark.parametrize(("rule", "qname", "qtype", "rcode", "answer", "extra"), ROWS,
                         ids=[r[0] for r in ROWS])
def test_rule(zone, catalog, rule, qname, qtype, rcode, answer, extra):
    got = resolve(zone, catalog, qname, qtype)
    want_rcode = {"NODATA": NOERROR, "NOERROR": NOERROR, "NXDOMAIN": NXDOMAIN, "REFUSED": REFUSED}[rcode]
    assert got.rcode == want_rcode
    if rcode == "REFUSED":
        assert not got.aa and not got.answer and not got.authority  # G10: answered, not ours
        return
    assert got.aa  # G5
    if rcode in ("NODATA", "NXDOMAIN"):
        assert got.answer == ()
        assert [rr.rtype for rr in got.authority] == [SOA]
        soa = got.authority[0]
        assert soa.name == ("clusterset", "local") and soa.ttl == 5  # G4
        assert soa.rdata == Soa(("ns", "dns", "clusterset", "local"),
                                ("hostmaster", "clusterset", "local"),
                                catalog.serial, 7200, 1800, 86400, 5)
        return
    assert got.authority == ()
    owners = {".".join(rr.name) for rr in got.answer}
    assert owners == {absolute(qname).lower().rstrip(".")}
    if answer is not None:
        assert sorted(rr_text(rr) for rr in got.answer) == sorted(answer)
    if extra is not None:
        assert sorted(f"{'.'.join(rr.name)} {rr_text(rr)}" for rr in got.additional) == sorted(extra)


def test_ttls_are_the_configured_ttl_and_version_ttl_is_28800(catalog):
    zone = Zone(Z, 30)
    a = resolve(zone, catalog, "web.demo.svc", "A")
    srv = resolve(zone, catalog, "_mysql._tcp.db.demo.svc", "SRV")
    assert {rr.ttl for rr in a.answer + srv.answer + srv.additional} == {30}  # G3
    assert resolve(zone, catalog, "dns-version", "TXT").answer[0].ttl == 28800  # D24
    neg = resolve(zone, catalog, "nosuch.demo.svc", "A").authority[0]
    assert neg.ttl == 30 and neg.rdata.minimum == 30
    long = resolve(Zone(Z, 600), catalog, "nosuch.demo.svc", "A").authority[0]
    assert long.ttl == 300 and long.rdata.minimum == 600  # G4: TTL = min(ttl, 300)


def test_apex_soa_has_the_digest_fields(zone, catalog):
    got = resolve(zone, catalog, "", "SOA")
    assert [rr.rtype for rr in got.answer] == [SOA]
    soa = got.answer[0].rdata
    assert soa == Soa(("ns", "dns", "clusterset", "local"), ("hostmaster", "clusterset", "local"),
                      catalog.serial, 7200, 1800, 86400, 5)


def test_strict_mode_turns_the_ack_hostname_form_off(catalog):
    strict = Zone(Z, 5, ack_names=False)
    for name in ("mysql-0.db.demo.svc", "dup.dupname.demo.svc", "10-1-0-7.db.demo.svc"):
        assert resolve(strict, catalog, name, "A").rcode == NXDOMAIN
    assert resolve(strict, catalog, "mysql-0.c1.db.demo.svc", "A").rcode == NOERROR


def test_ack_form_is_only_a_hostname_never_a_cluster_id(zone, catalog):
    """Gotcha 3: `<x>.<svc>.<ns>` exists only when x is a ready endpoint's hostname."""
    cat = build_catalog()
    # A cluster id that is also a hostname elsewhere: answers as the hostname only.
    cat.set_slice(imported_slice("db", "demo", "c3", [ep("10.4.0.1", "c1")], ports=MYSQL), 2)
    assert [rr_text(r) for r in resolve(zone, cat, "c1.db.demo.svc", "A").answer] == ["A 10.4.0.1"]
    assert resolve(zone, cat, "c3.db.demo.svc", "A").rcode == NXDOMAIN


def test_synced_gate_and_refusals(zone, catalog):
    q = parse_name(f"web.demo.svc.{Z}")
    before = zone.resolve(catalog, q, 1, synced=False)
    assert before.rcode == SERVFAIL and before.aa and [r.rtype for r in before.authority] == [SOA]  # D31
    assert zone.resolve(catalog, parse_name("."), 2, synced=False).rcode == REFUSED  # health check
    assert zone.resolve(catalog, q, 1, qclass=3).rcode == REFUSED  # CHAOS
    assert zone.resolve(catalog, parse_name(Z), AXFR).rcode == REFUSED  # no transfers


def test_any_returns_every_rrset_of_the_name(zone, catalog):
    apex = resolve(zone, catalog, "", "ANY")
    assert sorted(dns.rdatatype.to_text(r.rtype) for r in apex.answer) == ["NS", "SOA"]
    dual = zone.resolve(catalog, parse_name(f"dual.demo.svc.{Z}"), ANY)
    assert sorted(rr_text(r) for r in dual.answer) == sorted(
        ["A 10.96.0.11", "AAAA fd00::11", f"SRV 0 100 80 dual.demo.svc.{Z}"])
    assert resolve(zone, catalog, "svc", "ANY").authority  # an empty non-terminal: NODATA


def test_names_are_case_insensitive_and_dot_insensitive(zone, catalog):
    """G1/G2: parse_name folds case and the trailing dot."""
    assert parse_name("WeB.DEMO.svc.ClusterSet.Local.") == parse_name("web.demo.svc.clusterset.local")
    assert resolve(zone, catalog, "WEB.Demo.SVC", "A").answer[0].rdata == "10.96.0.10"


def test_another_zone_name_is_served_the_same_way(catalog):
    zone = Zone("mesh.example", 5)
    got = zone.resolve(catalog, parse_name("web.demo.svc.mesh.example"), 1)
    assert got.answer[0].rdata == "10.96.0.10"
    assert zone.resolve(catalog, parse_name(f"web.demo.svc.{Z}"), 1).rcode == REFUSED
    with pytest.raises(ValueError):
        Zone(".", 5)
