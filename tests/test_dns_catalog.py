"""The catalog (imports + slices -> per-service facts) and the wire rendering and answer
cache of a Responder, without sockets (those are test_dns_server.py / test_dns_wire.py)."""

from __future__ import annotations

import copy
import struct

import dns.edns
import dns.message
import dns.name
import pytest
from test_dns_zone import (
    BIG_COUNT,
    IMPORTS,
    MYSQL,
    SLICES,
    Z,
    build_catalog,
    ep,
    imported_slice,
    port,
    resolve,
    service_import,
)

from clusterset_dns.catalog import Catalog, build_records, dashed
from clusterset_dns.responder import Responder
from clusterset_dns.source import trim_import, trim_slice
from clusterset_dns.wire import aliasable, render
from clusterset_dns.zone import Zone, parse_name
from mcs_controller.model import labels as L


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog()


@pytest.fixture(scope="module")
def zone() -> Zone:
    return Zone(Z, 5)


# ---------------------------------------------------------------------------- the catalog


def test_catalog_reads_imports_and_slices_as_the_controller_writes_them(catalog):
    db = catalog.service("demo", "db")
    assert db is not None and db.headless and db.exists
    assert db.ips4 == ("10.1.0.5", "10.1.0.6", "10.1.0.7", "10.2.0.5", "10.3.0.9")
    assert {e.cluster for e in db.endpoints} == {("c1",), ("c2",), ("east", "prod")}
    assert not catalog.service("demo", "gone").exists  # only not-ready endpoints
    assert catalog.service("demo", "nosuch") is None
    assert catalog.has_namespace("other") and not catalog.has_namespace("nons")
    assert catalog.service_count == len(IMPORTS)
    assert catalog.endpoint_count == 8 + 2 + BIG_COUNT  # ready addresses of Headless imports
    assert dashed("fd00::1:7") == "fd00--1-7" and dashed("10.1.0.7") == "10-1-0-7"


def test_catalog_ignores_fqdn_slices_bad_addresses_and_unlabelled_slices():
    imp = service_import("h", "demo", "Headless", MYSQL)
    slices = [
        imported_slice("h", "demo", "c1", [ep("10.0.0.1"), ep("not-an-ip"), ep("fd00::1")]),
        {**imported_slice("h", "demo", "c1", [ep("db.example.com")], index=1), "addressType": "FQDN"},
    ]
    rec = build_records(imp, slices)
    assert rec.ips4 == ("10.0.0.1",) and rec.ips6 == ()  # fd00::1 is not IPv4: skipped
    cat = Catalog()
    unlabelled = imported_slice("h", "demo", "c1", [ep("10.0.0.1")])
    del unlabelled["metadata"]["labels"][L.LABEL_MCS_SERVICE_NAME]
    assert cat.set_slice(unlabelled, 1) == set()


def test_catalog_serial_moves_only_when_an_answer_can_change():
    cat = Catalog()
    imp = service_import("web", "demo", "ClusterSetIP", [port("http", 80)], ["10.0.0.1"])
    assert cat.set_import(imp, 100) == {("demo", "web")} and cat.serial == 100
    assert cat.set_import(copy.deepcopy(imp), 200) == set()  # a resync: nothing changed
    labelled = copy.deepcopy(imp)
    labelled["metadata"]["labels"] = {"team": "a"}
    assert cat.set_import(labelled, 250) == set()  # nothing DNS reads
    assert cat.serial == 100
    assert cat.set_slice(imported_slice("web", "demo", "c1", [ep("10.1.0.1")]), 300) == set()
    assert cat.serial == 100  # endpoints do not change a ClusterSetIP answer
    cat.set_import(service_import("web", "demo", "ClusterSetIP", [port("http", 80)], ["10.0.0.2"]), 400)
    assert cat.serial == 400
    cat.delete_import(imp, 500)
    assert cat.serial == 500 and cat.service("demo", "web") is None and not cat.has_namespace("demo")
    cat.set_import(imp, 450)  # a clock step back never lowers the serial
    assert cat.serial == 500


def test_catalog_follows_a_slice_whose_service_label_moves():
    cat = Catalog()
    for name in ("a", "b"):
        cat.set_import(service_import(name, "demo", "Headless", MYSQL), 1)
    old = imported_slice("a", "demo", "c1", [ep("10.0.0.1")], ports=MYSQL)
    cat.set_slice(old, 2)
    new = imported_slice("a", "demo", "c1", [ep("10.0.0.1")], ports=MYSQL)
    new["metadata"]["labels"][L.LABEL_MCS_SERVICE_NAME] = "b"
    assert cat.set_slice(new, 3, old) == {("demo", "a"), ("demo", "b")}
    assert not cat.service("demo", "a").exists and cat.service("demo", "b").ips4 == ("10.0.0.1",)
    assert cat.delete_slice(new, 4) == {("demo", "b")} and cat.endpoint_count == 0
    assert cat.delete_slice(new, 5) == set() and cat.serial == 4  # already gone


def test_catalog_rebuilds_a_service_once_after_a_burst_of_slice_events():
    """An initial list of a big Headless service must not cost a rebuild per slice."""
    cat = Catalog()
    cat.set_import(service_import("big", "demo", "Headless", MYSQL), 1)
    for i in range(50):
        eps = [ep(f"10.{i}.{j // 250}.{j % 250 + 1}", f"p-{i}-{j}") for j in range(100)]
        assert cat.set_slice(imported_slice("big", "demo", "c1", eps, ports=MYSQL, index=i), 2) == {
            ("demo", "big")}
    assert cat._records == {}  # nothing built yet
    rec = cat.service("demo", "big")
    assert len(rec.endpoints) == 5000 and cat.endpoint_count == 5000
    assert cat.service("demo", "big") is rec  # built once, kept until the next change
    # A type change of the import rebuilds from the slices already held.
    cat.set_import(service_import("big", "demo", "ClusterSetIP", MYSQL, ["10.96.9.9"]), 3)
    assert cat.service("demo", "big").ips4 == ("10.96.9.9",) and cat.endpoint_count == 0


# ---------------------------------------------------------------------------- rendering


def test_rendered_owner_names_point_into_the_question(zone, catalog):
    """The cached sections address owners by pointer, so any spelling of the qname fits."""
    qname = parse_name(f"web.demo.svc.{Z}")
    wire_q = dns.message.make_query(f"web.demo.svc.{Z}", "A").question[0]
    qlen = len(wire_q.name.to_wire()) + 4
    entry = render(resolve(zone, catalog, "web.demo.svc", "A"), qname, qlen, False, 1)
    tail = entry[2]
    assert tail[:2] == b"\xc0\x0c"  # answer owner = pointer to offset 12, the question
    neg = render(resolve(zone, catalog, "nosuch.demo.svc", "A"), parse_name(f"nosuch.demo.svc.{Z}"),
                 len(dns.name.from_text(f"nosuch.demo.svc.{Z}").to_wire()) + 4, False, 1)
    zone_offset = 12 + len(b"\x06nosuch\x04demo\x03svc")
    assert neg[2][:2] == bytes((0xC0, zone_offset))  # SOA owner = the zone inside the question


def test_responder_answers_every_spelling_from_one_entry(zone, catalog):
    r = Responder(zone, catalog)
    r.set_synced()
    for i, spelling in enumerate(("web.demo.svc", "WEB.DEMO.SVC", "wEb.DeMo.sVc")):
        q = dns.message.make_query(f"{spelling}.{Z}", "A", use_edns=False)
        reply = dns.message.from_wire(r.answer(q.to_wire(), False))
        assert q.is_response(reply)
        assert reply.question[0].name.to_text() == f"{spelling}.{Z}."  # byte-exact echo
        assert reply.answer[0].name.to_text() == f"{spelling}.{Z}."
        assert r.misses == 1 and r.entries == 1, i


def test_an_answer_past_64k_is_clipped_to_a_valid_message():
    cat = Catalog()
    cat.set_import(service_import("huge", "demo", "Headless", MYSQL), 1)
    eps = [ep(f"10.9.{j // 250}.{j % 250 + 1}", f"pod-{j}") for j in range(4200)]
    cat.set_slice(imported_slice("huge", "demo", "c1", eps, ports=MYSQL), 1)
    r = Responder(Zone(Z, 5), cat)
    r.set_synced()
    for qtype in ("A", "SRV"):
        q = dns.message.make_query(f"huge.demo.svc.{Z}", qtype, use_edns=0)
        wire = r.answer(q.to_wire(), True)
        assert len(wire) <= 65535
        _, _, qd, an, ns, ar = struct.unpack_from("!HHHHHH", wire)
        assert qd == 1 and 500 < an < 4200 and ns == 0 and ar >= 1  # the OPT record survives
        if qtype == "A":
            reply = dns.message.from_wire(wire)  # a well-formed message
            assert len(reply.answer[0]) == an and reply.edns == 0


def test_edns_aliases_only_where_lower_casing_cannot_change_the_size_limit(zone, catalog):
    """The EDNS fast path keys on question + OPT lower-cased; payload bytes 0x41-0x5A fold
    onto 0x61-0x7A, so 577 (0x0241) and 609 (0x0261) would share a key: never aliased."""
    r = Responder(zone, catalog)
    r.set_synced()
    made = {}
    for size in (512, 1232, 1400, 4096, 0x0241, 0x0261, 0x0441, 0x4141, 65, 97):
        q = dns.message.make_query(f"web.demo.svc.{Z}", "A", use_edns=0, payload=size)
        before = len(r.alias)
        first = r.answer(q.to_wire(), False)
        made[size] = len(r.alias) - before
        assert r.answer(q.to_wire(), False) == first  # alias hit or not: the same bytes
    assert made == {512: 1, 1232: 1, 1400: 1, 4096: 1, 0x0241: 0, 0x0261: 0, 0x0441: 0,
                    0x4141: 1, 65: 1, 97: 0}  # 97 (0x61) shares 65's (0x41) alias: both 512
    # The rule, exhaustively: a size may be aliased iff every size lower-casing folds onto
    # its key has the same UDP limit.
    def folds_with(b: int) -> set[int]:  # the bytes sharing b's lower-cased form
        return {b, b ^ 0x20} if 0x61 <= (b | 0x20) <= 0x7A else {b}

    for size in range(65536):
        hi, lo = divmod(size, 256)
        limits = {min(max(h * 256 + lo_, 512), 1232) for h in folds_with(hi) for lo_ in folds_with(lo)}
        assert aliasable(hi, lo) == (len(limits) == 1), size
    cookie = dns.message.make_query(f"web.demo.svc.{Z}", "A", use_edns=0,
                                    options=[dns.edns.GenericOption(10, b"\x01" * 8)])
    before = len(r.alias)
    assert dns.message.from_wire(r.answer(cookie.to_wire(), False)).answer
    assert len(r.alias) == before  # OPT with options: served from the question-keyed entry


def test_informer_trimming_keeps_everything_dns_reads():
    """The informers cache trimmed objects (no managedFields, targetRefs, ...): same answers."""
    full, trimmed = Catalog(), Catalog()
    for obj in IMPORTS:
        fat = copy.deepcopy(obj)
        fat["metadata"]["managedFields"] = [{"manager": "x" * 100}]
        full.set_import(fat, 1)
        trimmed.set_import(trim_import(fat), 1)
    for obj in SLICES:
        fat = copy.deepcopy(obj)
        for e in fat["endpoints"]:
            e.update(nodeName="n1", zone="z1", targetRef={"kind": "Pod", "name": "p"})
            e.setdefault("conditions", {}).update(serving=True, terminating=False)
        full.set_slice(fat, 1)
        small = trim_slice(fat)
        assert all(set(e) <= {"addresses", "hostname", "conditions"} for e in small["endpoints"])
        trimmed.set_slice(small, 1)
    for obj in IMPORTS:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        assert full.service(*key) == trimmed.service(*key)
