"""Answers over a UDP client's limit (RFC 1035 4.2.1, RFC 2181 section 9, RFC 6891).

The additional section goes first (whole RRsets from its end), then optional authority;
TC is set only when the answer section itself does not fit, and then the answer keeps
the whole RRsets that fit. Asserted through dnspython, raw sockets and dig, fresh and
from every cache path (plain, the EDNS alias, the question-keyed EDNS entry with options),
and after the catalog grows an answer past the limit and shrinks it again.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from test_dns_server import (
    ServedApp,
    _stats,
    frame,
    owned,
    randomise_case,
    raw_udp,
    read_frame,
    records,
    tcp,
    udp,
)
from test_dns_zone import BIG_COUNT, DB_EXTRA, DB_SRV, Z, ep

from clusterset_dns.wire import CUTS, FULL_LEN, PLAIN_LIMIT, render, variant
from clusterset_dns.zone import NS, NXDOMAIN, RR, SOA, A, Answer, Soa, parse_name
from mcs_controller.access.resources import ENDPOINT_SLICES

SRV_NAME = f"_mysql._tcp.db.demo.svc.{Z}"  # 7 SRV (fits 512 alone) + 8 addresses (does not)
DB = f"db.demo.svc.{Z}"  # ANY: A (5) + AAAA (2) + SRV (7) RRsets, 7 SRV do not fit next to them
BIG = f"big.demo.svc.{Z}"  # A: one RRset of 100 records, over every UDP limit


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApp]:
    with ServedApp() as s:
        yield s


def rrsets(section) -> dict[tuple[str, int], frozenset[str]]:
    return {(r.name.to_text().lower(), r.rdtype): frozenset(rd.to_text().lower() for rd in r)
            for r in section}


def assert_whole_rrsets(part, full) -> None:
    """Every RRset of `part` is the complete RRset of `full` (never a partial RRset)."""
    whole = rrsets(full)
    for key, rdatas in rrsets(part).items():
        assert whole.get(key) == rdatas, key


def whole_answer(s: ServedApp, name: str, qtype: str, edns: bool) -> dns.message.Message:
    return tcp(s, dns.message.make_query(name, qtype, use_edns=0 if edns else False))


# ---------------------------------------------------------------------------- no EDNS: 512 bytes


def test_an_answer_that_fits_without_its_additional_records_is_sent_without_tc(served):
    """The SRV RRset alone fits 512 bytes: no TC, the whole answer, the address RRsets that
    fit (not all 8); before the fix this came back empty with TC."""
    full = whole_answer(served, SRV_NAME, "SRV", edns=False)
    assert sorted(records(full.answer)) == sorted(DB_SRV) and sorted(owned(full.additional)) == sorted(DB_EXTRA)
    rng = random.Random(9)
    _, hits_before = served.call(_stats(served.app.responder))
    spellings = [randomise_case(SRV_NAME, rng) for _ in range(2)]
    for spelling in spellings * 2:  # rendered or cached, every spelling: the same answer
        q = dns.message.make_query(spelling, "SRV", use_edns=False)
        wire = raw_udp(served, q.to_wire())
        assert len(wire) <= PLAIN_LIMIT and wire[12:len(q.to_wire())] == q.to_wire()[12:]
        reply = dns.message.from_wire(wire)
        assert q.is_response(reply) and reply.rcode() == dns.rcode.NOERROR
        assert not reply.flags & dns.flags.TC and reply.flags & dns.flags.AA
        assert sorted(records(reply.answer)) == sorted(DB_SRV) and reply.authority == []
        assert reply.answer[0].name.to_text() == spelling + "."  # owner spelled as asked
        assert 0 < len(reply.additional) < len(full.additional)
        assert_whole_rrsets(reply.additional, full.additional)
        assert reply.edns == -1
    _, hits_after = served.call(_stats(served.app.responder))
    assert hits_after - hits_before >= 3
    # dnspython's fallback helper sees no TC, so it never needs TCP.
    q = dns.message.make_query(SRV_NAME, "SRV", use_edns=False)
    reply, used_tcp = dns.query.udp_with_fallback(q, served.host, port=served.port, timeout=2)
    assert not used_tcp and len(reply.answer[0]) == 7


def test_an_answer_section_over_the_limit_sets_tc_and_keeps_the_whole_rrsets_that_fit(served):
    full = whole_answer(served, DB, "ANY", edns=False)
    assert {dns.rdatatype.to_text(r.rdtype) for r in full.answer} == {"A", "AAAA", "SRV"}
    for _ in range(2):
        cut = udp(served, dns.message.make_query(DB, "ANY", use_edns=False))
        assert cut.flags & dns.flags.TC and cut.flags & dns.flags.AA and cut.rcode() == dns.rcode.NOERROR
        assert {dns.rdatatype.to_text(r.rdtype) for r in cut.answer} == {"A", "AAAA"}
        assert_whole_rrsets(cut.answer, full.answer)  # the SRV RRset left out entirely
        assert cut.authority == [] and cut.additional == []
    # One RRset bigger than the limit: an empty answer with TC; TCP has all of it.
    q = dns.message.make_query(BIG, "A", use_edns=False)
    for _ in range(2):
        wire = raw_udp(served, q.to_wire())
        cut = dns.message.from_wire(wire)
        assert len(wire) <= PLAIN_LIMIT and cut.flags & dns.flags.TC and cut.answer == []
        assert cut.question[0].name.to_text() == BIG + "."
    whole = tcp(served, q)
    assert not whole.flags & dns.flags.TC and len(whole.answer[0]) == BIG_COUNT
    reply, used_tcp = dns.query.udp_with_fallback(q, served.host, port=served.port, timeout=2)
    assert used_tcp and len(reply.answer[0]) == BIG_COUNT


def test_negative_answers_always_fit_with_their_soa():
    """The SOA of NXDOMAIN/NODATA is required for negative caching: it is never cut, and
    with the longest possible question it still fits 512 bytes."""
    labels = ("x" * 63, "x" * 63, "x" * 63, "y" * 44, *parse_name(Z))
    soa = RR(parse_name(Z), SOA, 5, Soa(("ns", "dns", *parse_name(Z)), ("hostmaster", *parse_name(Z)),
                                        1, 7200, 1800, 86400, 5))
    qlen = sum(len(x) + 1 for x in labels) + 1 + 4
    assert qlen == 255 + 4
    entry = render(Answer(NXDOMAIN, authority=(soa,)), labels, qlen, True, 1)
    assert entry[FULL_LEN] <= PLAIN_LIMIT and entry[CUTS] is None


def test_cuts_never_split_an_rrset_and_authority_is_optional_next_to_an_answer():
    """Rendered entries: interleaved additional records are regrouped into RRsets, a cut
    keeps or drops whole RRsets, and an answer with a big authority section drops the
    authority before it would set TC."""
    qname = parse_name(f"a.{Z}")
    qlen = len(f"a.{Z}") + 2 + 4
    hosts = [parse_name(f"h{i}.{Z}") for i in range(40)]
    extra = [RR(h, A, 5, f"10.0.{k}.{i}") for k in range(2) for i, h in enumerate(hosts)]  # interleaved
    ns = tuple(RR(parse_name(Z), NS, 5, h) for h in hosts)
    answer = Answer(0, answer=(RR(qname, A, 5, "10.9.9.9"),), authority=ns, additional=tuple(extra))
    for edns in (False, True):
        entry = render(answer, qname, qlen, edns, 1)
        full = dns.message.from_wire(b"\x00\x00" + entry[0] + b"\x01a" + _zone_wire() + b"\x00\x01\x00\x01"
                                     + entry[2])
        assert len(full.additional) == 40 and all(len(r) == 2 for r in full.additional)
        shapes = set()
        for limit in range(512, 1233, 17):
            pre, _, tail = variant(entry, limit)
            wire = b"\x00\x00" + pre + b"\x01a" + _zone_wire() + b"\x00\x01\x00\x01" + tail
            msg = dns.message.from_wire(wire)
            assert len(wire) <= limit and not msg.flags & dns.flags.TC
            assert records(msg.answer) == ["A 10.9.9.9"]
            assert msg.authority in ([], full.authority)  # all NS records or none
            assert msg.additional == [] or msg.authority  # additional only after the authority
            assert_whole_rrsets(msg.additional, full.additional)
            assert (msg.edns == 0) == edns
            shapes.add((bool(msg.authority), bool(msg.additional)))
        assert shapes == {(False, False), (True, False), (True, True)}  # every cut was taken


def _zone_wire() -> bytes:
    return b"".join(bytes((len(x),)) + x.encode() for x in parse_name(Z)) + b"\x00"


# ---------------------------------------------------------------------------- EDNS payload sizes


def test_every_edns_payload_size_gets_the_longest_cut_that_fits_from_every_cache_path(served):
    """Sizes around each cut, asked twice each with an option-less OPT (the alias cache)
    and with a cookie option (the question-keyed entry): both replies carry the same
    records, at most min(max(size, 512), 1232) bytes, TC only when the answer section
    does not fit, and no reply leaves out an RRset that a bigger one shows would fit."""
    cookie = [dns.edns.GenericOption(10, b"\x01" * 8)]
    for name, qtype in ((SRV_NAME, "SRV"), (DB, "ANY")):
        full = whole_answer(served, name, qtype, edns=True)
        seen: list[tuple[int, int, int]] = []  # (limit, reply length, records)
        for size in (*range(480, 800, 11), 0x0241, 0x0261, 100, 1232, 4096):
            limit = min(max(size, 512), 1232)
            bodies = set()
            for options in ([], cookie):
                q = dns.message.make_query(name, qtype, use_edns=0, payload=size, options=options)
                for _ in range(2):
                    wire = raw_udp(served, q.to_wire())
                    msg = dns.message.from_wire(wire)
                    assert len(wire) <= limit and msg.edns == 0 and msg.payload == 1232, size
                    assert_whole_rrsets(msg.answer, full.answer)
                    assert_whole_rrsets(msg.additional, full.additional)
                    if msg.flags & dns.flags.TC:
                        assert name != SRV_NAME, size  # its answer section fits any limit
                        assert msg.additional == [] and len(msg.answer) < len(full.answer)
                    else:
                        assert rrsets(msg.answer) == rrsets(full.answer)
                    bodies.add((msg.flags & dns.flags.TC, str(sorted(rrsets(msg.answer).items())),
                                str(sorted(rrsets(msg.additional).items()))))
                    count = sum(len(r) for r in msg.answer + msg.additional)
                    seen.append((limit, len(wire), count))
            assert len(bodies) == 1, size  # alias and question-keyed paths agree
        # Maximal: every reply with more records than another was too long for its limit.
        for limit, _, count in seen:
            assert all(length > limit for _, length, more in seen if more > count)
    sizes = {len(raw_udp(served, dns.message.make_query(SRV_NAME, "SRV", use_edns=0,
                                                         payload=p).to_wire())) for p in (512, 1232)}
    assert len(sizes) == 2  # 512 bytes: some addresses left out; 1232: all of them


# ---------------------------------------------------------------------------- dig


def _dig() -> str | None:
    return shutil.which("dig")


@pytest.mark.skipif(_dig() is None, reason="dig not installed")
def test_dig_sees_tc_only_when_the_answer_section_does_not_fit(served):
    def dig(*args: str) -> str:
        cmd = ["dig", f"@{served.host}", "-p", str(served.port), "+time=2", "+tries=1", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout

    def flags(out: str) -> list[str]:
        return out.split("flags:")[1].split(";")[0].split()

    def rcvd(out: str) -> int:
        return int(out.split("MSG SIZE  rcvd:")[1].split()[0])

    srv = dig("+noedns", "+ignore", SRV_NAME, "SRV")
    assert "tc" not in flags(srv) and "ANSWER: 7," in srv and rcvd(srv) <= 512
    assert "(UDP)" in srv and "ADDITIONAL: 0," not in srv
    big = dig("+noedns", "+ignore", BIG, "A")
    assert "tc" in flags(big) and "ANSWER: 0," in big
    retried = dig("+noedns", BIG, "A")  # dig retries over TCP on TC
    assert f"ANSWER: {BIG_COUNT}," in retried and "(TCP)" in retried
    anyq = dig("+notcp", "+noedns", "+ignore", DB, "ANY")  # dig asks ANY over TCP by default
    assert "tc" in flags(anyq) and "ANSWER: 7," in anyq and "(UDP)" in anyq  # 5 A + 2 AAAA
    assert "ANSWER: 14," in dig("+notcp", "+noedns", DB, "ANY")  # retried over TCP: all of it
    edns = dig("+notcp", "+bufsize=1232", "+ignore", DB, "ANY")
    assert "tc" not in flags(edns) and "ANSWER: 14," in edns and "(UDP)" in edns


# ---------------------------------------------------------------------------- the catalog moves


def test_truncation_follows_the_catalog_through_every_cache_variant():
    """Endpoints added until the SRV RRset alone exceeds 512 bytes: plain UDP turns to TC
    (an empty answer), EDNS 1232 still gets it whole; removed again: whole without TC."""
    with ServedApp() as s:
        q_plain = dns.message.make_query(SRV_NAME, "SRV", use_edns=False)
        q_edns = dns.message.make_query(SRV_NAME, "SRV", use_edns=0, payload=1232)
        q_small = dns.message.make_query(SRV_NAME, "SRV", use_edns=0, payload=512)
        for q in (q_plain, q_edns, q_small, q_plain, q_edns, q_small):  # rendered, then cached
            assert not udp(s, q).flags & dns.flags.TC

        async def edit(grow: bool) -> None:
            sl = await s.app.client.get(ENDPOINT_SLICES, "demo", "db-c2-ipv4-0")
            if grow:
                sl["endpoints"] += [ep(f"10.2.1.{i}", f"mysql-extra-{i}") for i in range(3)]
            else:
                sl["endpoints"] = sl["endpoints"][:2]
            await s.app.client.replace(ENDPOINT_SLICES, sl)

        def wait(check) -> None:
            deadline = time.monotonic() + 2
            while not all(check(q, udp(s, q)) for q in (q_plain, q_edns, q_small)):
                assert time.monotonic() < deadline, "answers did not follow the catalog"
                time.sleep(0.005)

        s.call(edit(True))
        wait(lambda q, r: bool(r.flags & dns.flags.TC) == (q is not q_edns)
             and (len(r.answer[0]) == 10 if q is q_edns else r.answer == []))
        with socket.create_connection((s.host, s.port), timeout=2) as sock:
            sock.sendall(frame(q_plain.to_wire()))
            assert len(dns.message.from_wire(read_frame(sock)).answer[0]) == 10
        s.call(edit(False))
        wait(lambda q, r: not r.flags & dns.flags.TC and len(r.answer[0]) == 7)
