"""The DNS server through real clients over real sockets (dnspython, raw sockets, dig).

One server (a `DnsApp` on uvloop in a background thread, fed by an EmbeddedCluster
holding the fixture of test_dns_zone.py) answers every rule of the table over UDP with
EDNS, UDP without EDNS and TCP, each query in a 0x20-randomised spelling; then the wire
behaviours: truncation, EDNS, malformed packets, opcodes, TCP framing and limits.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from test_dns_zone import NAMESPACES, OBJECTS, ROWS, Z, absolute, check_soa_rr

from clusterset_dns.app import DnsApp
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import NAMESPACES as NS_RESOURCE

try:
    import uvloop
except ImportError:  # pragma: no cover - the server must work on the stock loop too
    uvloop = None


class ServedApp:
    """A DnsApp on its own event loop thread, so tests can use blocking clients."""

    def __init__(self, objects=OBJECTS, **kwargs) -> None:
        self.loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.objects = objects
        self.kwargs = kwargs
        self.app: DnsApp | None = None

    def call(self, coro, timeout: float = 5.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> DnsApp:
        cluster = EmbeddedCluster("c2", bookmark_interval=0)
        for ns in NAMESPACES:
            await cluster.create(NS_RESOURCE, {"metadata": {"name": ns}})
        for res, obj in self.objects:
            await cluster.create(res, obj)
        kwargs = {"listen": ("127.0.0.1", 0), "admin": ("127.0.0.1", 0), **self.kwargs}
        app = DnsApp(cluster, **kwargs)
        await app.start()
        await app.wait_ready(5)
        return app

    def __enter__(self) -> ServedApp:
        self.thread.start()
        self.app = self.call(self._start())
        return self

    def __exit__(self, *exc) -> None:
        if self.app is not None:
            self.call(self.app.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @property
    def host(self) -> str:
        return self.app.address[0]

    @property
    def port(self) -> int:
        return self.app.address[1]


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApp]:
    with ServedApp() as s:
        yield s


# ---------------------------------------------------------------------------- client helpers


def udp(s: ServedApp, q: dns.message.Message) -> dns.message.Message:
    return dns.query.udp(q, s.host, port=s.port, timeout=2)


def tcp(s: ServedApp, q: dns.message.Message) -> dns.message.Message:
    return dns.query.tcp(q, s.host, port=s.port, timeout=2)


def raw_udp(s: ServedApp, payload: bytes, wait: float = 1.0) -> bytes | None:
    """Send raw bytes; the reply, or None when the server stays silent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        sock.sendto(payload, (s.host, s.port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def read_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack("!H", recv_exact(sock, 2))
    return recv_exact(sock, size)


def frame(msg: bytes) -> bytes:
    return struct.pack("!H", len(msg)) + msg


def randomise_case(name: str, rng: random.Random) -> str:
    """0x20 randomisation (with at least one upper-case letter, so an echo is visible)."""
    out = "".join(c.upper() if rng.random() < 0.5 else c for c in name)
    return out if out != name else name.upper()


def rd_text(rdtype: int, rd) -> str:
    kind = dns.rdatatype.to_text(rdtype)
    if kind == "SRV":
        return f"SRV {rd.priority} {rd.weight} {rd.port} {rd.target.to_text().rstrip('.').lower()}"
    if kind == "NS":
        return f"NS {rd.target.to_text().rstrip('.').lower()}"
    return f"{kind} {rd.to_text()}"


def records(section) -> list[str]:
    return [rd_text(rrset.rdtype, rd) for rrset in section for rd in rrset]


def owned(section) -> list[str]:
    return [f"{rrset.name.to_text().rstrip('.').lower()} {rd_text(rrset.rdtype, rd)}"
            for rrset in section for rd in rrset]


# ---------------------------------------------------------------------------- the rule table

TRANSPORTS = ("udp-edns", "udp-plain", "tcp")
#: Answers too big for one UDP datagram (whole) are asserted over TCP here; what UDP
#: clients get of them is in test_dns_truncation.py.
TOO_BIG = {"udp-plain": ("D9-big", "D16", "D17"), "udp-edns": ("D9-big",), "tcp": ()}
CASES = [(t, *row) for t in TRANSPORTS for row in ROWS if row[0] not in TOO_BIG[t]]


@pytest.mark.parametrize(("transport", "rule", "qname", "qtype", "rcode", "answer", "extra"), CASES,
                         ids=[f"{c[1]}-{c[0]}" for c in CASES])
def test_rule_over_the_wire(served, transport, rule, qname, qtype, rcode, answer, extra):
    """Asked twice in two spellings: the first answer is rendered, the second a cache hit."""
    rng = random.Random(f"{rule}-{transport}")
    for _ in range(2):
        name = randomise_case(absolute(qname), rng) if qname != "." else "."
        q = dns.message.make_query(name, qtype, use_edns=0 if transport == "udp-edns" else False)
        reply = tcp(served, q) if transport == "tcp" else udp(served, q)
        check_reply(served, q, name, reply, transport, rule, qtype, rcode, answer, extra)


def check_reply(served, q, name, reply, transport, rule, qtype, rcode, answer, extra):
    assert q.is_response(reply)
    assert reply.question[0].name.to_text() == name  # G1: echoed as sent (0x20 survives)
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RD  # RD copied
    assert not reply.flags & dns.flags.RA and not reply.flags & dns.flags.TC  # never recursive
    assert reply.edns == (0 if transport == "udp-edns" else -1)  # OPT only when asked
    want = dns.rcode.NOERROR if rcode == "NODATA" else dns.rcode.from_text(rcode)
    assert reply.rcode() == want
    if rcode == "REFUSED":
        assert not reply.flags & dns.flags.AA and not reply.answer and not reply.authority
        return
    assert reply.flags & dns.flags.AA  # G5
    if rcode in ("NODATA", "NXDOMAIN"):
        assert reply.answer == []
        [soa] = reply.authority
        assert soa.rdtype == dns.rdatatype.SOA and len(soa) == 1
        # G1: the SOA owner is the zone as the query spelled it.
        assert soa.name.to_text() == name[len(name) - len(Z) - 1:]
        check_soa_rr(soa.name.to_text(), soa.ttl, soa[0].to_text(), serial=served.app.catalog.serial)
        return
    assert reply.authority == []
    for rrset in reply.answer:
        assert rrset.name.to_text() == name  # owners spelled like the question
        assert rrset.ttl == (28800 if qtype == "TXT" else 5)  # G3, D24
    if rule == "D27":
        [soa] = reply.answer
        check_soa_rr(soa.name.to_text(), soa.ttl, soa[0].to_text(), serial=served.app.catalog.serial)
    if answer is not None:
        assert sorted(records(reply.answer)) == sorted(answer)
    if extra is not None:
        assert sorted(owned(reply.additional)) == sorted(extra)


def test_strict_flag_turns_the_ack_form_off_over_the_wire():
    with ServedApp(ack_names=False) as s:
        q = dns.message.make_query(f"mysql-0.db.demo.svc.{Z}", "A")
        assert udp(s, q).rcode() == dns.rcode.NXDOMAIN
        q = dns.message.make_query(f"mysql-0.c1.db.demo.svc.{Z}", "A")
        assert records(udp(s, q).answer) == ["A 10.1.0.5"]


def test_ttl_and_zone_are_configurable():
    with ServedApp(ttl=30, zone="mesh.example") as s:
        reply = udp(s, dns.message.make_query("web.demo.svc.mesh.example", "A"))
        assert reply.answer[0].ttl == 30 and records(reply.answer) == ["A 10.96.0.10"]
        neg = udp(s, dns.message.make_query("nosuch.demo.svc.mesh.example", "A"))
        assert neg.authority[0].ttl == 30 and neg.authority[0][0].minimum == 30
        assert udp(s, dns.message.make_query(f"web.demo.svc.{Z}", "A")).rcode() == dns.rcode.REFUSED


# ---------------------------------------------------------------------------- cache behaviour


def test_a_cache_hit_echoes_the_exact_question_bytes_of_each_spelling(served):
    r = served.app.responder
    base = f"web.demo.svc.{Z}"
    first = dns.message.make_query(base, "A", use_edns=False)
    udp(served, first)  # fills the entry (or it is already there)
    _, hits_before = served.call(_stats(r))
    for spelling in ("WEB.DEMO.SVC.CLUSTERSET.LOCAL", "wEb.DeMo.SvC.cLuStErSeT.lOcAl", base):
        q = dns.message.make_query(spelling, "A", use_edns=False)
        wire = q.to_wire()
        reply = raw_udp(served, wire)
        assert reply[:2] == wire[:2]  # the ID
        assert reply[12:len(wire)] == wire[12:]  # question byte for byte
        msg = dns.message.from_wire(reply)
        assert msg.answer[0].name.to_text() == spelling + "."
    _, hits_after = served.call(_stats(r))
    assert hits_after - hits_before == 3


async def _stats(r):
    return r.stats()


def test_edns_and_plain_queries_get_their_own_variants(served):
    name = f"dual.demo.svc.{Z}"
    plain = udp(served, dns.message.make_query(name, "AAAA", use_edns=False))
    edns = udp(served, dns.message.make_query(name, "AAAA", use_edns=0, payload=4096))
    assert plain.edns == -1 and plain.opt is None
    assert edns.edns == 0 and edns.payload == 1232  # our size, whatever the client offers
    assert records(plain.answer) == records(edns.answer) == ["AAAA fd00::11"]
    r = served.app.responder
    key = b"\x04dual\x04demo\x03svc\x0aclusterset\x05local\x00\x00\x1c\x00\x01"
    assert r.full_length(key, edns=False) + 11 == r.full_length(key, edns=True)  # + the OPT RR


def test_rd_is_copied_from_each_query_even_from_the_same_entry(served):
    name = f"web.demo.svc.{Z}"
    for flags in (dns.flags.RD, 0, dns.flags.RD, 0):
        q = dns.message.make_query(name, "A")
        q.flags = flags
        reply = udp(served, q)
        assert reply.flags & dns.flags.RD == flags
        assert reply.flags & dns.flags.AA


def test_out_of_zone_answers_are_not_cached(served):
    r = served.app.responder
    before = r.entries
    for i in range(5):
        reply = udp(served, dns.message.make_query(f"junk{i}.example.com", "A"))
        assert reply.rcode() == dns.rcode.REFUSED
    assert r.entries == before


# ---------------------------------------------------------------------------- G11: size limits
# (how answers are cut to a UDP limit: test_dns_truncation.py)


def test_answer_above_our_edns_limit_needs_tcp(served):
    name = f"big.demo.svc.{Z}"
    q = dns.message.make_query(name, "A", use_edns=0, payload=65000)
    cut = udp(served, q)
    assert cut.flags & dns.flags.TC and cut.answer == [] and cut.edns == 0
    assert cut.payload == 1232  # what we accept, whatever the client offers
    whole = tcp(served, q)
    assert len(whole.answer[0]) == 100 and whole.edns == 0 and not whole.flags & dns.flags.TC
