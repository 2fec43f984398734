"""Issue 3 item 12: rules 1-4 through real forwarding resolvers set up the way CoreDNS's
`clusterset.local { forward . <dns svc> }` stub forwards (Debian `unbound` with a
forward-zone, `dnsmasq --server=/clusterset.local/...`), and directly against the server.

One `python -m clusterset_dns --fleet tests/dnsfleet --cluster c1` process serves the whole
module; the resolvers run as subprocesses on loopback and are stopped at the end. A test
needing a resolver that is not installed is skipped.
"""

from __future__ import annotations

import getpass
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from netkit import free_port

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "tests" / "dnsfleet"
README = ROOT / "clusterset_dns" / "README.md"
CLUSTER = "c1"
Z = "clusterset.local."
LISTENING = re.compile(r"clusterset_dns listening on udp\+tcp (\S+):(\d+)")
ADMIN = re.compile(r"clusterset_dns admin on http://(\S+):(\d+)")
Target = tuple[str, int]


# ---------------------------------------------------------------------- processes


def tool(name: str) -> str | None:
    """A Debian binary, also where PATH for non-root users leaves /usr/sbin out."""
    found = shutil.which(name)
    if found:
        return found
    path = Path("/usr/sbin") / name
    return str(path) if path.exists() else None


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def ask(target: Target, name: str, rdtype: str, *, tcp: bool = False,
        timeout: float = 3.0) -> dns.message.Message:
    """One query, EDNS0 (1232 bytes) and RD set as a stub resolver sends it."""
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    if tcp:
        return dns.query.tcp(query, target[0], port=target[1], timeout=timeout)
    reply = dns.query.udp(query, target[0], port=target[1], timeout=timeout)
    if reply.flags & dns.flags.TC:
        reply = dns.query.tcp(query, target[0], port=target[1], timeout=timeout)
    return reply


def wait_answering(target: Target, proc: subprocess.Popen, what: str, within: float = 10.0) -> None:
    """Until `dns-version` TXT gets NOERROR (SERVFAIL before the first sync, rule 6)."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            reply = ask(target, "dns-version." + Z, "TXT", timeout=0.3)
            if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                return
            last = dns.rcode.to_text(reply.rcode())
        except (OSError, dns.exception.DNSException) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} not answering within {within}s: {last}")


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, int]]:
    """clusterset_dns on port 0 for DNS and admin: (its DNS address, its admin port), both as
    it prints them (a port picked here before could be taken meanwhile by any connection)."""
    log = tmp_path_factory.mktemp("clusterset_dns") / "stderr.log"
    cmd = [sys.executable, "-m", "clusterset_dns", "--fleet", str(FLEET), "--cluster", CLUSTER,
           "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    found: list[Target] = []
    admin_port: list[int] = []
    seen = threading.Event()

    def drain() -> None:  # read the address lines, then keep the pipe from filling up
        assert proc.stdout is not None
        for line in proc.stdout:
            admin = ADMIN.search(line)
            if admin and not admin_port:
                admin_port.append(int(admin.group(2)))
                seen.set()  # printed after the listening line
            match = LISTENING.search(line)
            if match and not found:
                found.append((match.group(1), int(match.group(2))))

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + 10
        while not seen.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no 'listening' line from clusterset_dns: {log.read_text()[-2000:]}")
        wait_answering(found[0], proc, "clusterset_dns")
        yield found[0], admin_port[0]
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def server(started: tuple[Target, int]) -> Target:
    return started[0]


@pytest.fixture(scope="module")
def admin_port(started: tuple[Target, int]) -> int:
    return started[1]


def _start_resolver(cmd: list[str], port: int, what: str, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_answering(("127.0.0.1", port), proc, what)
    except RuntimeError as exc:
        stop(proc)
        raise RuntimeError(f"{exc}\n{log.read_text()[-2000:]}") from None
    return proc


@pytest.fixture(scope="module")
def unbound(server: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    binary = tool("unbound")
    if binary is None:
        pytest.skip("unbound is not installed (Debian package unbound)")
    tmp = tmp_path_factory.mktemp("unbound")
    port = free_port(udp=True)
    conf = tmp / "unbound.conf"
    # What CoreDNS's stub does: forward clusterset.local, no DNSSEC for it, no qname
    # minimisation (full names go upstream); loopback upstreams allowed; answers keep the
    # additional section so SRV glue reaches the client.
    conf.write_text(f"""server:
    interface: 127.0.0.1@{port}
    port: {port}
    do-daemonize: no
    chroot: ""
    username: ""
    use-syslog: no
    logfile: ""
    pidfile: ""
    directory: "{tmp}"
    verbosity: 1
    num-threads: 1
    so-reuseport: no
    do-ip6: no
    do-not-query-localhost: no
    qname-minimisation: no
    minimal-responses: no
    domain-insecure: "{Z}"
    local-zone: "{Z}" nodefault
forward-zone:
    name: "{Z}"
    forward-addr: {server[0]}@{server[1]}
""")
    proc = _start_resolver([binary, "-d", "-c", str(conf)], port, "unbound", tmp / "unbound.log")
    try:
        yield ("127.0.0.1", port)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def dnsmasq(server: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    binary = tool("dnsmasq")
    if binary is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base)")
    tmp = tmp_path_factory.mktemp("dnsmasq")
    port = free_port(udp=True)
    cmd = [binary, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
           f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file=",
           f"--user={getpass.getuser()}", "--log-facility=-",
           f"--server=/{Z.rstrip('.')}/{server[0]}#{server[1]}"]
    proc = _start_resolver(cmd, port, "dnsmasq", tmp / "dnsmasq.log")
    try:
        yield ("127.0.0.1", port)
    finally:
        stop(proc)


@pytest.fixture(params=["direct", "unbound", "dnsmasq"])
def via(request: pytest.FixtureRequest) -> Target:
    """The same questions directly and through each forwarding resolver."""
    return request.getfixturevalue("server" if request.param == "direct" else request.param)


# ---------------------------------------------------------------------- answers


def fqdn(name: str) -> str:
    return name if name.endswith(".") else f"{name}.{Z}"


def rdatas(reply: dns.message.Message, rdtype: str, section: str = "answer") -> set[str]:
    kind = dns.rdatatype.from_text(rdtype)
    return {rd.to_text() for rrset in getattr(reply, section) if rrset.rdtype == kind for rd in rrset}


def addresses(target: Target, name: str, rdtype: str) -> set[str]:
    reply = ask(target, fqdn(name), rdtype)
    assert reply.rcode() == dns.rcode.NOERROR, (name, rdtype, dns.rcode.to_text(reply.rcode()))
    return rdatas(reply, rdtype)


def assert_soa_authority(reply: dns.message.Message) -> None:
    """Digest G4: the zone's SOA in authority, fields as CoreDNS writes them, TTL <= 5."""
    (soa,) = [r for r in reply.authority if r.rdtype == dns.rdatatype.SOA]
    assert soa.name == dns.name.from_text(Z)
    assert 0 <= soa.ttl <= 5
    (rd,) = list(soa)
    assert (str(rd.mname), str(rd.rname)) == ("ns.dns." + Z, "hostmaster." + Z)
    assert (rd.refresh, rd.retry, rd.expire, rd.minimum) == (7200, 1800, 86400, 5)


def assert_nodata(target: Target, name: str, rdtype: str) -> None:
    reply = ask(target, fqdn(name), rdtype)
    assert reply.rcode() == dns.rcode.NOERROR, (name, rdtype, dns.rcode.to_text(reply.rcode()))
    assert reply.answer == [], (name, rdtype, reply.answer)
    assert_soa_authority(reply)


def assert_nxdomain(target: Target, name: str, rdtype: str = "A") -> None:
    reply = ask(target, fqdn(name), rdtype)
    assert reply.rcode() == dns.rcode.NXDOMAIN, (name, rdtype, dns.rcode.to_text(reply.rcode()))
    assert reply.answer == []
    assert_soa_authority(reply)


def srv_set(reply: dns.message.Message) -> set[tuple[int, int, str]]:
    return {(rd.priority, rd.port, str(rd.target))
            for rrset in reply.answer if rrset.rdtype == dns.rdatatype.SRV for rd in rrset}


def glue(reply: dns.message.Message) -> set[tuple[str, str]]:
    return {(str(rrset.name), rd.to_text()) for rrset in reply.additional
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rd in rrset}


MYSQL = "mysql.demo.svc." + Z
#: The ready endpoints of the mysql import: SRV target name -> its addresses.
MYSQL_PODS = {
    f"mysql-0.west.{MYSQL}": {"10.1.0.10"},
    f"mysql-1.west.{MYSQL}": {"10.1.0.11"},
    f"10-1-0-12.west.{MYSQL}": {"10.1.0.12"},
    f"mysql-0.east.prod.{MYSQL}": {"10.2.0.10", "fd00:2::10"},
    f"fd00-2--12.east.prod.{MYSQL}": {"fd00:2::12"},
}


# ---------------------------------------------------------------------- rule 1


def test_clusterset_ip_answers_the_vip_by_family(via: Target) -> None:
    assert addresses(via, "web.demo.svc", "A") == {"10.100.0.10"}
    assert_nodata(via, "web.demo.svc", "AAAA")  # D3: IPv4-only import
    # D2/D4: dual-stack, and no endpoints at all: the VIPs still answer
    assert addresses(via, "dual.demo.svc", "A") == {"10.100.0.11"}
    assert addresses(via, "dual.demo.svc", "AAAA") == {"fd00:10:96::11"}


def test_headless_answers_every_ready_endpoint_of_every_cluster(via: Target) -> None:
    # west: two ready + one with no conditions (ready); mysql-2 is not ready. east.prod: dual-stack.
    assert addresses(via, "mysql.demo.svc", "A") == {"10.1.0.10", "10.1.0.11", "10.1.0.12",
                                                     "10.2.0.10"}
    assert addresses(via, "mysql.demo.svc", "AAAA") == {"fd00:2::10", "fd00:2::12"}


def test_headless_without_a_ready_endpoint_is_nxdomain(via: Target) -> None:
    assert_nxdomain(via, "gone.demo.svc", "A")
    assert_nxdomain(via, "gone.demo.svc", "AAAA")


# ---------------------------------------------------------------------- rule 2


def test_srv_for_a_named_port_with_the_vip_in_additional(via: Target) -> None:
    web = "web.demo.svc." + Z
    for name, port in (("_tcp._tcp", 42), ("_udp._udp", 42), ("_http._tcp", 80)):
        reply = ask(via, f"{name}.{web}", "SRV")
        assert reply.rcode() == dns.rcode.NOERROR, name
        assert srv_set(reply) == {(0, port, web)}, name
        assert glue(reply) == {(web, "10.100.0.10")}, name
    assert_nxdomain(via, f"_http._udp.{web}", "SRV")  # D7: no port with that name and protocol
    assert_nxdomain(via, f"_nosuch._tcp.{web}", "SRV")


def test_bare_srv_is_deduplicated_by_target_and_port(via: Target) -> None:
    web = "web.demo.svc." + Z
    reply = ask(via, web, "SRV")
    # tcp/42 and udp/42 give the same (target, port): one record, as the conformance suite expects
    assert srv_set(reply) == {(0, 42, web), (0, 80, web)}
    assert sum(len(r) for r in reply.answer) == 2
    assert glue(reply) == {(web, "10.100.0.10")}


@pytest.mark.parametrize("name", ["_mysql._tcp." + MYSQL, MYSQL])
def test_headless_srv_names_each_ready_endpoint(via: Target, name: str) -> None:
    reply = ask(via, name, "SRV")
    assert reply.rcode() == dns.rcode.NOERROR
    assert srv_set(reply) == {(0, 3306, target) for target in MYSQL_PODS}
    assert sum(len(r) for r in reply.answer) == len(MYSQL_PODS)
    assert glue(reply) == {(t, a) for t, addrs in MYSQL_PODS.items() for a in addrs}


# ---------------------------------------------------------------------- rule 3


def test_pod_names_in_the_upstream_form(via: Target) -> None:
    for target, addrs in MYSQL_PODS.items():
        for family in ("A", "AAAA"):
            want = {a for a in addrs if (":" in a) == (family == "AAAA")}
            if want:
                assert addresses(via, target, family) == want, (target, family)
            else:
                assert_nodata(via, target, family)
    assert_nxdomain(via, f"mysql-2.west.{MYSQL}")  # not ready
    assert_nxdomain(via, f"bogus.west.{MYSQL}")  # D13
    assert_nxdomain(via, f"mysql-0.nowhere.{MYSQL}")
    assert_nxdomain(via, f"mysql-1.east.prod.{MYSQL}")  # mysql-1 lives in west only


def test_pod_names_in_the_ack_one_form(via: Target) -> None:
    assert addresses(via, f"mysql-0.{MYSQL}", "A") == {"10.1.0.10", "10.2.0.10"}
    assert addresses(via, f"mysql-0.{MYSQL}", "AAAA") == {"fd00:2::10"}
    assert addresses(via, f"mysql-1.{MYSQL}", "A") == {"10.1.0.11"}
    assert_nodata(via, f"mysql-1.{MYSQL}", "AAAA")
    assert_nxdomain(via, f"mysql-2.{MYSQL}")  # only ready endpoints name a host
    assert_nxdomain(via, "mysql-0.web.demo.svc." + Z)  # hostnames exist on Headless imports only


def test_cluster_id_form_is_nxdomain_and_does_not_hide_the_names_below(via: Target) -> None:
    # D14: <clusterid>.<svc>.<ns> must not exist (one- and two-label ids). A resolver that
    # caches this NXDOMAIN must still forward the pod names below it.
    assert_nxdomain(via, f"west.{MYSQL}")
    assert_nxdomain(via, f"east.prod.{MYSQL}")
    assert_nxdomain(via, f"west.web.demo.svc.{Z}")
    assert addresses(via, f"mysql-0.west.{MYSQL}", "A") == {"10.1.0.10"}
    assert addresses(via, f"mysql-0.east.prod.{MYSQL}", "AAAA") == {"fd00:2::10"}


# ---------------------------------------------------------------------- rule 4


def test_nodata_for_existing_names_and_empty_non_terminals(via: Target) -> None:
    assert_nodata(via, "web.demo.svc", "TXT")  # D25
    assert_nodata(via, "mysql.demo.svc", "MX")
    assert_nodata(via, "dual.demo.svc", "SOA")  # D28
    assert_nodata(via, "svc." + Z, "A")  # D21: empty non-terminals
    assert_nodata(via, "demo.svc." + Z, "A")


def test_nxdomain_for_names_that_do_not_exist(via: Target) -> None:
    assert_nxdomain(via, "nosuch.demo.svc")  # D19: not imported
    assert_nxdomain(via, "web.quiet.svc")  # namespace exists, imports nothing
    assert_nxdomain(via, "web.nowhere.svc")  # D20: namespace does not exist here
    assert_nxdomain(via, "nosuch.demo.svc", "TXT")  # D26
    assert_nxdomain(via, "web.demo.notsvc." + Z)  # D23
    assert_nxdomain(via, "a.b.c.d.mysql.demo.svc." + Z)


def test_apex_soa_ns_and_dns_version(via: Target) -> None:
    reply = ask(via, Z, "SOA")
    assert reply.rcode() == dns.rcode.NOERROR
    (soa,) = reply.answer
    (rd,) = list(soa)
    assert (str(rd.mname), str(rd.rname)) == ("ns.dns." + Z, "hostmaster." + Z)
    assert rdatas(ask(via, Z, "NS"), "NS") == {"ns.dns." + Z}
    reply = ask(via, "dns-version." + Z, "TXT")
    assert rdatas(reply, "TXT") == {'"1.0.0"'}


# ---------------------------------------------------------------------- compared directly


QUESTIONS = [
    ("web.demo.svc", "A"), ("dual.demo.svc", "AAAA"), ("mysql.demo.svc", "A"),
    ("_mysql._tcp." + MYSQL, "SRV"), ("web.demo.svc", "SRV"), (f"mysql-0.{MYSQL}", "A"),
    (f"10-1-0-12.west.{MYSQL}", "A"), ("gone.demo.svc", "A"), ("web.demo.svc", "TXT"),
    ("nosuch.demo.svc", "A"), ("dns-version." + Z, "TXT"),
]


def summary(reply: dns.message.Message) -> tuple:
    """What a forwarder must pass on unchanged (TTLs and flags aside)."""
    def section(rrsets: list) -> set:
        return {(str(r.name).lower(), r.rdtype, rd.to_text().lower()) for r in rrsets for rd in r}
    return (reply.rcode(), section(reply.answer),
            {(n, t) for n, t, _ in section(reply.authority)})


@pytest.mark.parametrize("resolver", ["unbound", "dnsmasq"])
def test_resolvers_pass_on_what_the_server_answers(
    server: Target, resolver: str, request: pytest.FixtureRequest
) -> None:
    through = request.getfixturevalue(resolver)
    for name, rdtype in QUESTIONS:
        assert summary(ask(through, fqdn(name), rdtype)) == summary(
            ask(server, fqdn(name), rdtype)), (resolver, name, rdtype)


def test_tcp_through_dnsmasq_reaches_the_server_over_tcp(dnsmasq: Target, server: Target) -> None:
    # dnsmasq forwards a TCP question over TCP: the server's length-framed path behind a forwarder
    for name, rdtype in (("_mysql._tcp." + MYSQL, "SRV"), ("nosuch.demo.svc", "A")):
        assert summary(ask(dnsmasq, fqdn(name), rdtype, tcp=True)) == summary(
            ask(server, fqdn(name), rdtype, tcp=True))


def test_direct_answers_are_authoritative_with_ttl_5_and_echo_the_question(server: Target) -> None:
    name = "WeB.DeMo.SvC.ClUsTeRsEt.LoCaL."
    reply = ask(server, name, "A")
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.QR and reply.flags & dns.flags.RD
    assert reply.question[0].name.to_text() == name  # 0x20 case survives
    (rrset,) = reply.answer
    assert (rrset.name.to_text(), rrset.ttl) == (name, 5)
    negative = ask(server, "NoSuch.demo.svc." + Z, "A")
    assert negative.flags & dns.flags.AA and negative.rcode() == dns.rcode.NXDOMAIN


def test_the_coredns_health_check_query_gets_an_answer(server: Target) -> None:
    # forward's health check asks `. IN NS`: any reply keeps the upstream healthy (digest 5.2)
    reply = ask(server, ".", "NS")
    assert reply.rcode() == dns.rcode.REFUSED and not reply.flags & dns.flags.RA


def test_readme_lists_every_metric_the_server_exports(admin_port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=3) as resp:
        text = resp.read().decode()
    families = set(re.findall(r"^# TYPE (clusterset_dns_\w+) (\w+)", text, re.M))
    exported = {name + ("_total" if kind == "counter" and not name.endswith("_total") else "")
                for name, kind in families if not name.endswith("_created")}
    documented = set(re.findall(r"`(clusterset_dns_\w+)`", README.read_text()))
    assert exported and exported == documented, (exported - documented, documented - exported)
