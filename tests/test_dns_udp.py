"""Batched UDP serving (`clusterset_dns.udp.BatchUdp`, recvmmsg/sendmmsg) over real
sockets: many queries from many clients per syscall, each reply to its own sender with
its own ID and question spelling; replies left out of a batch (responses, runts), queries
too long for a slot, and the portable DatagramProtocol path kept for other platforms."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from test_dns_server import ServedApp, randomise_case, records, tcp, udp
from test_dns_zone import DB_SRV, Z, build_catalog

from clusterset_dns import udp as batch_udp
from clusterset_dns.responder import Responder
from clusterset_dns.udp import BATCH, SLOT, BatchUdp
from clusterset_dns.zone import Zone

pytestmark = pytest.mark.skipif(batch_udp._syscalls() is None, reason="no recvmmsg here")

NAMES = [(f"web.demo.svc.{Z}", "A", ["A 10.96.0.10"]), (f"dual.demo.svc.{Z}", "AAAA", ["AAAA fd00::11"]),
         (f"_mysql._tcp.db.demo.svc.{Z}", "SRV", DB_SRV)]


class Observed:
    def __init__(self) -> None:
        self.samples: list[float] = []
        self.count = 0

    def __call__(self, seconds: float) -> None:
        self.samples.append(seconds)

    def report(self, exc: BaseException) -> None:  # the server's error log
        self.count += 1


@pytest.fixture
def batch() -> Iterator[tuple[BatchUdp, tuple[str, int], Observed]]:
    """A BatchUdp on its own socket, driven by hand (no event loop): each `_batch()` is
    exactly one recvmmsg + sendmmsg over what is queued."""
    responder = Responder(Zone(Z, 5), build_catalog())
    responder.set_synced()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    seen = Observed()
    b = BatchUdp.create(sock, responder, seen, seen, 8)
    assert b is not None
    yield b, sock.getsockname(), seen
    b.close()


def clients(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind(("127.0.0.1", 0))
        c.settimeout(2)
        out.append(c)
    return out


def test_one_batch_answers_many_clients_each_with_its_own_id_and_spelling(batch):
    b, server, seen = batch
    socks = clients(5)
    rng = random.Random(3)
    sent: dict[int, list[dns.message.Message]] = {i: [] for i in range(len(socks))}
    for k in range(BATCH + 9):  # more than one batch is queued
        i = k % len(socks)
        name, qtype, _ = NAMES[k % len(NAMES)]
        q = dns.message.make_query(randomise_case(name, rng), qtype, use_edns=0 if k % 2 else False)
        if k % 3 == 0:
            q.flags = 0  # RD clear: copied per query, also from a cached entry
        socks[i].sendto(q.to_wire(), server)
        sent[i].append(q)
    _, hits_before = b.responder.stats()
    assert b._batch() == BATCH
    assert b._batch() == 9
    assert b._batch() == 0  # nothing left: EAGAIN, no reply
    for i, c in enumerate(socks):
        for q in sent[i]:  # per client in order: datagrams on one path are not reordered
            wire = c.recv(4096)
            reply = dns.message.from_wire(wire)
            assert q.is_response(reply) and not reply.flags & dns.flags.TC
            assert reply.flags & dns.flags.RD == q.flags & dns.flags.RD and reply.flags & dns.flags.AA
            assert reply.question[0].name.to_text() == q.question[0].name.to_text()  # 0x20 echo
            want = next(w for n, t, w in NAMES if n.lower() == q.question[0].name.to_text()[:-1].lower())
            assert sorted(records(reply.answer)) == sorted(want)
            assert len(wire) <= (1232 if q.edns == 0 else 512)
        c.close()
    # Every query after the first of its (name, type, EDNS) is a hit, counted for metrics.
    assert b.responder.stats()[1] - hits_before == BATCH + 9 - 2 * len(NAMES)
    assert len(seen.samples) == (BATCH + 9) // 8 and all(s >= 0 for s in seen.samples)  # 1 in 8
    assert seen.count == 0 and b.dropped == 0


def test_datagrams_without_a_reply_leave_gaps_and_the_rest_is_answered(batch):
    b, server, _ = batch
    c = clients(1)[0]
    good = [dns.message.make_query(NAMES[k % 3][0], NAMES[k % 3][1]) for k in range(6)]
    response = dns.message.make_response(good[0]).to_wire()  # QR=1: never answered
    queue = [b"", good[0].to_wire(), b"\x01\x02\x03", response, good[1].to_wire(), good[2].to_wire(),
             response, b"\x00" * 11, good[3].to_wire(), good[4].to_wire(), response, good[5].to_wire(),
             response]
    for packet in queue:
        c.sendto(packet, server)
    assert b._batch() == len(queue)
    got = [dns.message.from_wire(c.recv(4096)) for _ in good]
    assert [r.id for r in got] == [q.id for q in good]
    assert all(r.rcode() == dns.rcode.NOERROR and r.answer for r in got)
    c.settimeout(0.2)
    with pytest.raises(TimeoutError):
        c.recv(4096)  # nothing for the silent ones
    c.close()


def test_a_query_longer_than_a_slot_gets_formerr_and_the_next_slots_are_whole(batch):
    b, server, _ = batch
    c = clients(1)[0]
    q = dns.message.make_query(f"web.demo.svc.{Z}", "A")
    huge = struct.pack("!HHHHHH", 0x7777, 0x0100, 1, 0, 0, 1) + q.to_wire()[12:] + b"\x00" * SLOT
    c.sendto(huge, server)
    c.sendto(q.to_wire(), server)
    assert b._batch() == 2
    first = c.recv(4096)
    assert first[:2] == b"\x77\x77" and first[3] & 0x0F == dns.rcode.FORMERR and len(first) == 12
    assert records(dns.message.from_wire(c.recv(4096)).answer) == ["A 10.96.0.10"]
    c.close()


def test_ipv6_batches_reply_to_the_v6_sender():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1")
    sock.setblocking(False)
    responder = Responder(Zone(Z, 5), build_catalog())
    responder.set_synced()
    seen = Observed()
    b = BatchUdp.create(sock, responder, seen, seen, 64)
    try:
        cs = []
        for _ in range(3):
            c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            c.settimeout(2)
            c.sendto(dns.message.make_query(f"web.demo.svc.{Z}", "A").to_wire(), sock.getsockname())
            cs.append(c)
        assert b._batch() == 3
        for c in cs:
            assert records(dns.message.from_wire(c.recv(4096)).answer) == ["A 10.96.0.10"]
            c.close()
    finally:
        b.close()


def test_served_app_uses_batches_and_the_portable_path_answers_the_same():
    """The DnsApp default is the batch path; udp_batch=False is asyncio's DatagramProtocol
    (other platforms): the same answers, truncation and case echo on both."""
    replies = {}
    for batched in (True, False):
        with ServedApp(udp_batch=batched) as s:
            assert (s.app.server._batch is not None) == batched
            rng = random.Random(5)
            got = []
            for name, qtype, want in NAMES:
                for edns in (False, 0):
                    spelled = randomise_case(name, rng)
                    q = dns.message.make_query(spelled, qtype, use_edns=edns)
                    reply = udp(s, q)
                    assert reply.question[0].name.to_text() == spelled + "."
                    assert sorted(records(reply.answer)) == sorted(want)
                    got.append((records(reply.answer), len(reply.additional), reply.flags & dns.flags.TC))
            big = dns.message.make_query(f"big.demo.svc.{Z}", "A", use_edns=False)
            cut = udp(s, big)
            assert cut.flags & dns.flags.TC and cut.answer == []
            assert len(tcp(s, big).answer[0]) == 100
            replies[batched] = got
    assert replies[True] == replies[False]


async def test_batches_on_the_stock_asyncio_loop():
    """pytest-asyncio runs the stock loop: add_reader + recvmmsg work there too, and stop()
    closes the socket."""
    import asyncio

    from clusterset_dns.server import DnsServer

    responder = Responder(Zone(Z, 5), build_catalog())
    responder.set_synced()
    server = DnsServer(responder, "127.0.0.1", 0)
    host, port = await server.start()
    assert server._batch is not None
    loop = asyncio.get_running_loop()
    try:
        q = dns.message.make_query(f"WEB.demo.svc.{Z}", "A")
        for _ in range(3):
            reply = await loop.run_in_executor(None, lambda: dns.query.udp(q, host, port=port, timeout=2))
            assert records(reply.answer) == ["A 10.96.0.10"]
            assert reply.question[0].name.to_text() == f"WEB.demo.svc.{Z}."
    finally:
        await server.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, port))  # the port is free again: the UDP socket was closed
