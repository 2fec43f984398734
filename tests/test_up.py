"""`up`: the all-in-one fleet, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_up(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mcs_fleet", "up", *args, "--exit-after", "0.5", "--admin-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def test_up_on_the_default_fleet_shows_imports_shadows_and_slices():
    done = run_up()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    cluster2 = out.split("cluster cluster2", 1)[1]
    assert "ServiceImport  provider-ns/service1  type=ClusterSetIP" in cluster2
    assert "ServiceImport  provider-ns/mysql  type=Headless  ips=-  from=cluster1" in cluster2
    assert "Service        provider-ns/amcs-service1  clusterIP=10.12." in cluster2
    assert "mysql-0=127.1.1.10" in cluster2
    assert "controller admin: http://127.0.0.1:" in out


def test_up_on_the_migration_fleet_mirrors_under_the_native_name():
    done = run_up(str(ROOT / "manifests" / "examples" / "migration"))
    assert done.returncode == 0, done.stderr
    old = done.stdout.split("cluster old", 1)[1].split("cluster new", 1)[0]
    assert "service=service3  source=new  endpoints=[127.2.0.10]" in old


def test_up_reports_bad_files_and_keeps_going(tmp_path: Path):
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "bad.yaml").write_text("kind: [oops\n")
    (tmp_path / "c1" / "svc.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: default}\nspec: {ports: [{name: x}]}\n")
    done = run_up(str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "bad.yaml: not valid YAML" in done.stderr
    assert "svc.yaml (document 1): Service default/s" in done.stderr
    assert "spec.ports[0].port: required integer" in done.stderr
    assert "Traceback" not in done.stderr


async def test_up_serves_clusterset_dns_per_cluster_while_running():
    import asyncio
    import re

    import dns.asyncquery
    import dns.message
    import dns.rcode

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcs_fleet", "up", "--exit-after", "20", "--admin-port", "0",
        "--dns-port", "0", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        servers: dict[str, tuple[str, int]] = {}
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, (await proc.stderr.read()).decode()
                if m := re.match(r"\s+(\S+)\s+(127\.53\.0\.\d+):(\d+)\s+try: dig", line):
                    servers[m.group(1)] = (m.group(2), int(m.group(3)))
                if line.startswith("running"):
                    break
        assert set(servers) == {"cluster1", "cluster2"}

        async def ask(server, name, qtype="A"):
            q = dns.message.make_query(name, qtype)
            return await dns.asyncquery.udp(q, server[0], port=server[1], timeout=2)

        reply = await ask(servers["cluster2"], "service1.provider-ns.svc.clusterset.local")
        assert [rd.address for rrset in reply.answer for rd in rrset][0].startswith("10.12.")
        pod = await ask(servers["cluster2"], "mysql-0.mysql.provider-ns.svc.clusterset.local")
        assert [rd.address for rrset in pod.answer for rd in rrset] == ["127.1.1.10"]
        upstream = await ask(servers["cluster2"], "mysql-0.cluster1.mysql.provider-ns.svc.clusterset.local")
        assert [rd.address for rrset in upstream.answer for rd in rrset] == ["127.1.1.10"]
        missing = await ask(servers["cluster1"], "nope.provider-ns.svc.clusterset.local")
        assert missing.rcode() == dns.rcode.NXDOMAIN
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


@pytest.mark.parametrize(("fleet", "answer"), [
    ((), b"This is env cluster1 !"),  # the default: service1, whose pods are in cluster1
    ((str(ROOT / "manifests" / "examples" / "two-regions"),), b"This is env cluster"),
])
async def test_up_gateway_answers_over_http_and_https_as_printed(fleet: tuple[str, ...],
                                                                 answer: bytes):
    """The printed curl commands work, over HTTP and over TLS (SNI = the rule host, the
    self-signed default certificate)."""
    import asyncio
    import re
    import ssl

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcs_fleet", "up", *fleet,
        "--exit-after", "30", "--admin-port", "0", "--dns-port", "0", "--gateway-port", "0",
        "--gateway-tls-port", "0", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        http = https = None
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, (await proc.stderr.read()).decode()
                if m := re.search(r"curl -H 'Host: (\S+)' http://([\d.]+):(\d+)/", line):
                    http = (m.group(1), m.group(2), int(m.group(3)))
                if m := re.search(r"curl -k --resolve (\S+):(\d+):([\d.]+) https://", line):
                    https = (m.group(1), m.group(3), int(m.group(2)))
                if line.startswith("running"):
                    break
        assert http is not None and https is not None and http[0] == https[0]

        async def get(host: str, addr: str, port: int, tls: ssl.SSLContext | None) -> bytes:
            reader, writer = await asyncio.open_connection(
                addr, port, ssl=tls, server_hostname=host if tls else None)
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read()
            writer.close()
            return data

        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for target, tls in ((http, None), (https, insecure)):
            reply = await get(*target, tls)
            assert reply.startswith(b"HTTP/1.1 200") and answer in reply, reply[:300]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
