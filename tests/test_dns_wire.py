"""The DNS server's wire behaviour through real sockets: malformed packets, opcodes, EDNS
versions, TCP framing and limits, dig, the admin port, fuzzing, and the command line."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from test_dns_server import (
    ServedApp,
    frame,
    owned,
    raw_udp,
    read_frame,
    records,
    tcp,
    udp,
)
from test_dns_zone import NAMESPACES, OBJECTS, Z

from clusterset_dns.app import DnsApp


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApp]:
    with ServedApp() as s:
        yield s


# ---------------------------------------------------------------------------- malformed and odd packets


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x03web\x04demo\x03svc\x0aclusterset\x05local\x00\x00\x01\x00\x01"
FORMERR_PACKETS = {
    "no-question": header(),
    "qdcount-0": header(qd=0),
    "qdcount-2": header(qd=2) + QUESTION + QUESTION,
    "label-overruns": header() + b"\x3fabc",
    "no-type-class": header() + QUESTION[:-4],
    "pointer-in-question": header() + b"\x03web\xc0\x0c\x00\x01\x00\x01",
    "reserved-label-type": header() + b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01",
    "trailing-garbage": header() + QUESTION + b"junk",
    "opt-bad-rdlen": header(ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x09",
    "opt-bad-option": header(ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x03\x00\x0a\x00",
    "ar-record-garbage": header(ar=1) + QUESTION + b"\x07garbage",
    "name-too-long": header() + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63
    + b"\x3f" + b"d" * 63 + b"\x00\x00\x01\x00\x01",
}


@pytest.mark.parametrize("name", list(FORMERR_PACKETS))
def test_garbage_with_a_header_gets_formerr(served, name):
    packet = FORMERR_PACKETS[name]
    reply = raw_udp(served, packet)
    assert reply is not None and len(reply) == 12
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply)
    assert qid == 0x1234 and flags & 0x8000 and flags & 0x000F == dns.rcode.FORMERR
    assert flags & 0x0100  # RD copied
    with socket.create_connection((served.host, served.port), timeout=2) as sock:
        sock.sendall(frame(packet))
        assert read_frame(sock)[3] & 0x0F == dns.rcode.FORMERR


def test_no_header_no_answer_and_responses_are_never_answered(served):
    """Under 12 bytes there is nothing to answer to; a packet with QR=1 is someone's answer
    (replying could start a loop). A valid query sent after them gets the first reply."""
    full = header(qid=0x4242) + QUESTION
    silent = [full[:n] for n in (0, 1, 5, 11)] + [header(qid=0x4343, flags=0x8100) + QUESTION]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for packet in silent:
            sock.sendto(packet, (served.host, served.port))
        sock.sendto(header(qid=0x5555) + QUESTION, (served.host, served.port))
        reply = sock.recv(4096)
    assert reply[:2] == b"\x55\x55"  # nothing came back for the silent ones
    assert dns.message.from_wire(reply).answer


@pytest.mark.parametrize(("opcode", "label"), [(1, "IQUERY"), (2, "STATUS"), (4, "NOTIFY"), (5, "UPDATE")])
def test_other_opcodes_get_notimp(served, opcode, label):
    reply = raw_udp(served, header(flags=(opcode << 11) | 0x0100) + QUESTION)
    assert reply is not None
    msg_flags = struct.unpack("!H", reply[2:4])[0]
    assert msg_flags & 0x8000 and (msg_flags >> 11) & 0xF == opcode, label
    assert msg_flags & 0x000F == dns.rcode.NOTIMP


def test_unknown_edns_version_gets_badvers(served):
    q = dns.message.make_query(f"web.demo.svc.{Z}", "A", use_edns=1)
    reply = udp(served, q)
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0 and reply.answer == []


def test_unusual_but_valid_layouts_are_answered_via_the_slow_path(served):
    # An answer-section record in a query (dnslib judges the layout): still answered.
    extra = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x01\x02\x03\x04"
    reply = raw_udp(served, header(an=1) + QUESTION + extra)
    assert dns.message.from_wire(reply).answer[0][0].address == "10.96.0.10"
    # EDNS with options (a client cookie, as dig sends): answered with our OPT.
    cookie = b"\x00\x0a\x00\x08" + b"\x01" * 8
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00" + struct.pack("!H", len(cookie)) + cookie
    msg = dns.message.from_wire(raw_udp(served, header(ar=1) + QUESTION + opt))
    assert msg.edns == 0 and msg.answer[0][0].address == "10.96.0.10"


def test_other_classes_and_transfers_are_refused(served):
    chaos = dns.message.make_query("version.bind", "TXT", "CH")
    assert udp(served, chaos).rcode() == dns.rcode.REFUSED
    axfr = dns.message.make_query(Z, "AXFR")
    assert tcp(served, axfr).rcode() == dns.rcode.REFUSED


def test_the_forwarders_health_check_is_answered_on_both_transports(served):
    """CoreDNS forward probes `. IN NS` with RD=1; any answer keeps us marked healthy."""
    q = dns.message.make_query(".", "NS")
    for reply in (udp(served, q), tcp(served, q)):
        assert q.is_response(reply) and reply.rcode() == dns.rcode.REFUSED
        assert reply.flags & dns.flags.RD and not reply.flags & dns.flags.RA


# ---------------------------------------------------------------------------- TCP


def test_tcp_serves_several_queries_per_connection_and_pipelines(served):
    names = [f"web.demo.svc.{Z}", f"dual.demo.svc.{Z}", f"nosuch.demo.svc.{Z}"]
    queries = [dns.message.make_query(n, "A") for n in names]
    with socket.create_connection((served.host, served.port), timeout=2) as sock:
        for q in queries:  # one after the other on one connection
            assert q.is_response(dns.query.tcp(q, served.host, port=served.port, sock=sock, timeout=2))
        sock.sendall(b"".join(frame(q.to_wire()) for q in queries))  # pipelined in one write
        replies = [dns.message.from_wire(read_frame(sock)) for _ in queries]
        assert [r.id for r in replies] == [q.id for q in queries]  # in order
        assert [r.rcode() for r in replies] == [0, 0, dns.rcode.NXDOMAIN]
        wire = frame(queries[0].to_wire())
        for i in range(len(wire)):  # one byte at a time: reassembled
            sock.sendall(wire[i:i + 1])
        assert dns.message.from_wire(read_frame(sock)).id == queries[0].id


def test_tcp_closes_on_a_message_without_header_and_survives_garbage(served):
    with socket.create_connection((served.host, served.port), timeout=2) as sock:
        sock.sendall(frame(b"\x00\x01\x02"))
        assert sock.recv(10) == b""  # closed, no reply
    assert tcp(served, dns.message.make_query(f"web.demo.svc.{Z}", "A")).answer


def test_tcp_idle_timeout_and_connection_cap():
    with ServedApp(idle_timeout=0.3, max_connections=2) as s:
        a = socket.create_connection((s.host, s.port), timeout=2)
        b = socket.create_connection((s.host, s.port), timeout=2)
        time.sleep(0.05)
        with socket.create_connection((s.host, s.port), timeout=2) as c:
            assert c.recv(10) == b""  # over the cap: closed at once
        q = dns.message.make_query(f"web.demo.svc.{Z}", "A")
        assert dns.query.tcp(q, s.host, port=s.port, sock=a, timeout=2).answer  # a still works
        start = time.monotonic()
        assert b.recv(10) == b""  # b idles out
        assert 0.15 < time.monotonic() - start < 1.5
        a.close()
        b.close()
        time.sleep(0.05)
        assert tcp(s, q).answer  # slots free again


# ---------------------------------------------------------------------------- dig, admin


def _tool(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/sbin/{name}" if shutil.which(f"/usr/sbin/{name}") else None)


@pytest.mark.skipif(_tool("dig") is None, reason="dig not installed")
def test_dig_sees_the_records(served):
    def dig(*args: str) -> str:
        cmd = ["dig", f"@{served.host}", "-p", str(served.port), "+time=2", "+tries=1", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout

    assert dig("+short", f"web.demo.svc.{Z}").split() == ["10.96.0.10"]
    assert dig("+short", "+tcp", f"mysql-0.c1.db.demo.svc.{Z}", "AAAA").split() == ["fd00::1:5"]
    srv = dig("+short", f"_http._tcp.web.demo.svc.{Z}", "SRV").split()
    assert srv == ["0", "100", "80", f"web.demo.svc.{Z}."]
    assert "status: REFUSED" in dig(".", "NS")
    nx = dig(f"nosuch.demo.svc.{Z}")
    assert "status: NXDOMAIN" in nx and "flags: qr aa rd;" in nx and "SOA" in nx
    cut = dig("+noedns", "+ignore", f"big.demo.svc.{Z}", "A")
    assert " tc" in cut.split("flags:")[1].split(";")[0]
    retried = dig("+noedns", f"big.demo.svc.{Z}", "A")  # dig retries over TCP itself
    assert "ANSWER: 100" in retried and "(TCP)" in retried
    assert dig("+short", f"dns-version.{Z}", "TXT").strip() == '"1.0.0"'


def test_admin_serves_metrics_health_and_readiness(served):
    udp(served, dns.message.make_query(f"web.demo.svc.{Z}", "A"))
    tcp(served, dns.message.make_query(f"web.demo.svc.{Z}", "A"))
    base = f"http://127.0.0.1:{served.app.admin_port}"
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(base + path, timeout=2) as resp:
            assert resp.status == 200
    with urllib.request.urlopen(base + "/metrics", timeout=2) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("clusterset_dns_"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    assert values['clusterset_dns_queries_total{qtype="A",rcode="NOERROR",transport="udp"}'] >= 1
    assert values['clusterset_dns_queries_total{qtype="A",rcode="NOERROR",transport="tcp"}'] >= 1
    assert values["clusterset_dns_cache_hits_total"] >= 1
    assert values["clusterset_dns_cache_misses_total"] >= 1
    assert values["clusterset_dns_catalog_services"] == 11
    assert values["clusterset_dns_catalog_endpoints"] == 110
    assert values["clusterset_dns_synced"] == 1
    assert values["clusterset_dns_cache_entries"] >= 1
    assert values['clusterset_dns_query_duration_seconds_count{transport="tcp"}'] >= 1
    assert 'clusterset_dns_query_duration_seconds_bucket{le="0.0001",transport="udp"}' in values


def test_udp_latency_is_sampled(served):
    before = served.call(_latency_count(served.app, "udp"))
    q = dns.message.make_query(f"web.demo.svc.{Z}", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for _ in range(200):
            sock.sendto(q.to_wire(), (served.host, served.port))
            sock.recv(4096)
    after = served.call(_latency_count(served.app, "udp"))
    assert 2 <= after - before <= 5  # one in 64


async def _latency_count(app: DnsApp, transport: str) -> float:
    for metric in app.metrics.latency.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels["transport"] == transport:
                return sample.value
    return 0.0


def test_ipv6_listener():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1")
    with ServedApp(listen=("::1", 0)) as s:
        q = dns.message.make_query(f"web.demo.svc.{Z}", "A")
        assert records(dns.query.udp(q, "::1", port=s.port, timeout=2).answer) == ["A 10.96.0.10"]
        assert records(dns.query.tcp(q, "::1", port=s.port, timeout=2).answer) == ["A 10.96.0.10"]
        glue = dns.query.udp(dns.message.make_query(Z, "NS"), "::1", port=s.port, timeout=2)
        assert owned(glue.additional) == [f"ns.dns.{Z} AAAA ::1"]


def test_glue_is_omitted_on_a_wildcard_listener():
    with ServedApp(listen=("0.0.0.0", 0)) as s:
        reply = dns.query.udp(dns.message.make_query(Z, "NS"), "127.0.0.1", port=s.port, timeout=2)
        assert records(reply.answer) == [f"NS ns.dns.{Z}"] and reply.additional == []


# ---------------------------------------------------------------------------- robustness


def mutate(packet: bytes, rng: random.Random) -> bytes:
    data = bytearray(packet)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1:
            del data[rng.randrange(len(data) + 1):]
        elif op == 2:
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif len(data) >= 12:
            data[4 + 2 * rng.randrange(4) + 1] = rng.randrange(4)  # counts
    return bytes(data)


SEEDS = [
    dns.message.make_query(f"web.demo.svc.{Z}", "A", use_edns=False).to_wire(),
    dns.message.make_query(f"_mysql._tcp.db.demo.svc.{Z}", "SRV", use_edns=0).to_wire(),
    dns.message.make_query(f"mysql-0.c1.db.demo.svc.{Z}", "AAAA", use_edns=0, payload=4096).to_wire(),
    dns.message.make_query(".", "NS").to_wire(),
    header(ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0c\x00\x0a\x00\x08" + b"c" * 8,
]


async def _fuzz(app: DnsApp, seed: int, count: int) -> int:
    rng = random.Random(seed)
    answered = 0
    for _ in range(count):
        packet = mutate(rng.choice(SEEDS), rng)
        for tcp_mode in (False, True):
            reply = app.responder.answer(packet, tcp_mode)
            if reply is None:
                assert len(packet) < 12 or packet[2] & 0x80
                continue
            assert reply[:2] == packet[:2] and reply[2] & 0x80
            dns.message.from_wire(reply)  # every reply parses
            answered += 1
    return answered


def test_fuzzed_packets_never_raise_and_always_get_a_well_formed_reply(served):
    assert served.call(_fuzz(served.app, 1, 4000), timeout=30) > 4000
    rng = random.Random(2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(300):
            sock.sendto(mutate(rng.choice(SEEDS), rng) or b"\x00", (served.host, served.port))
    q = dns.message.make_query(f"web.demo.svc.{Z}", "A")
    assert records(udp(served, q).answer) == ["A 10.96.0.10"]
    assert served.app.server.errors.count == 0


# ---------------------------------------------------------------------------- the command line


def write_fleet(root, cluster: str = "c1") -> None:
    import yaml

    folder = root / cluster
    folder.mkdir(parents=True)
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in NAMESPACES]
    docs += [obj for _, obj in OBJECTS]
    (folder / "imports.yaml").write_text(yaml.safe_dump_all(docs))


def test_cli_serves_a_fleet_cluster_and_stops_gracefully_on_sigterm(tmp_path):
    import re
    import signal
    import sys

    write_fleet(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "clusterset_dns", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
         "--fleet", str(tmp_path), "--cluster", "c1", "--log-format", "json", "--ttl", "7",
         "--shutdown-delay", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"clusterset_dns listening on udp\+tcp 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        port_ = int(match.group(1))
        q = dns.message.make_query(f"WEB.demo.svc.{Z}", "A")
        deadline = time.monotonic() + 5
        while True:  # SERVFAIL until the catalog's first sync (quick on a fleet folder)
            reply = dns.query.udp(q, "127.0.0.1", port=port_, timeout=2)
            if reply.rcode() != dns.rcode.SERVFAIL or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert records(reply.answer) == ["A 10.96.0.10"] and reply.answer[0].ttl == 7
        assert records(dns.query.tcp(q, "127.0.0.1", port=port_, timeout=2).answer) == ["A 10.96.0.10"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        logs = proc.stderr.read()
        assert '"msg": "catalog synced"' in logs and '"msg": "stopped"' in logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _dns_process(root, delay: str) -> tuple[subprocess.Popen, int, int]:
    """`python -m clusterset_dns` on a fleet folder: the process, its DNS and admin ports,
    once it answers."""
    import re
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "clusterset_dns", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
         "--fleet", str(root), "--cluster", "c1", "--shutdown-delay", delay],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dns_line, admin_line = proc.stdout.readline(), proc.stdout.readline()
    port_ = int(re.search(r":(\d+)$", dns_line.strip()).group(1))
    admin = int(re.search(r":(\d+)$", admin_line.strip()).group(1))
    q = dns.message.make_query(f"web.demo.svc.{Z}", "A")
    deadline = time.monotonic() + 5
    while dns.query.udp(q, "127.0.0.1", port=port_, timeout=2).rcode() != dns.rcode.NOERROR:
        assert time.monotonic() < deadline, "never synced"
        time.sleep(0.02)
    return proc, port_, admin


def _readyz(admin: int) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _until_draining(admin: int, within: float = 2.0) -> None:
    """Until /readyz answers 503 "shutting down"."""
    deadline = time.monotonic() + within
    while _readyz(admin) != (503, "shutting down\n"):
        assert time.monotonic() < deadline, f"/readyz: {_readyz(admin)}"
        time.sleep(0.02)


def test_sigterm_keeps_answering_with_readyz_failing_then_stops(tmp_path):
    """--shutdown-delay (CoreDNS's lameduck): after SIGTERM /readyz fails while UDP and TCP
    queries are still answered; the process stops when the delay is over (exit 0). A second
    SIGTERM stops it at once."""
    import signal

    write_fleet(tmp_path)
    q = dns.message.make_query(f"web.demo.svc.{Z}", "A")
    proc, port_, admin = _dns_process(tmp_path, "1.5")
    try:
        assert _readyz(admin)[0] == 200
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _until_draining(admin)
        assert records(dns.query.udp(q, "127.0.0.1", port=port_, timeout=2).answer) == ["A 10.96.0.10"]
        assert records(dns.query.tcp(q, "127.0.0.1", port=port_, timeout=2).answer) == ["A 10.96.0.10"]
        assert proc.wait(10) == 0
        assert time.monotonic() - start >= 1.4
        with pytest.raises(OSError):
            dns.query.tcp(q, "127.0.0.1", port=port_, timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    proc, port_, admin = _dns_process(tmp_path, "60")
    try:
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _until_draining(admin)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0 and time.monotonic() - start < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_cli_reports_bad_arguments(capsys):
    from clusterset_dns.__main__ import amain, parse_args

    args = parse_args(["--fleet", "/nonexistent", "--cluster", "c1", "--admin", "off"])
    assert asyncio.run(amain(args)) == 2
    assert "no cluster folder" in capsys.readouterr().err
    for argv, message in ((["--listen", "nonsense"], "HOST:PORT"), (["--fleet", "/tmp"], "--cluster"),
                          (["--listen", "1.2.3.4:99999"], "out of range")):
        with pytest.raises(SystemExit) as exited:
            parse_args(argv)
        assert exited.value.code == 2 and message in capsys.readouterr().err
    args = parse_args(["--listen", "[::1]:5353", "--admin", "off", "--strict"])
    assert args.listen == ("::1", 5353) and args.admin is None and args.strict
    assert parse_args([]).listen == ("0.0.0.0", 53) and parse_args([]).admin == ("0.0.0.0", 8081)
