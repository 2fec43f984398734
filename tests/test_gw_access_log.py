"""The access log (`--access-log`, gateway/access_log.py): one JSON line per request, through
a real gateway and real HTTP clients; a slow log never holds up requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from fleetkit import eventually
from test_gw_app import gateway_over, gateway_process, ingress

import gateway.access_log as access_log_module
from gateway.access_log import AccessLog
from gateway.proxy.heads import Peer

ROOT = Path(__file__).resolve().parent.parent


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_each_request_is_one_json_line_with_nginx_fields(tmp_path: Path):
    log = tmp_path / "access.log"
    dead = ingress("dead", "dead.example.com", "nothing")  # no such Service: 503
    async with gateway_over([ingress("shop", "shop.example.com", "web"), dead], "127.0.75.1",
                            access_log=str(log)) as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/cart?id=7", headers={
                    "Host": "shop.example.com", "User-Agent": "probe/1.0",
                    "Referer": "https://example.com/\"quoted\""}) as r:
                body = await r.read()
                assert r.status == 200
                request_id = up.requests[-1].header("x-request-id")
            async with s.head(f"{url}/\u00e9t\u00e9", headers={  # escaped as JSON needs
                    "Host": "nowhere.example.com", "X-Request-ID": 'a"b\\c'}) as r:
                assert r.status == 404
            async with s.get(f"{url}/", headers={"Host": "dead.example.com"}) as r:
                assert r.status == 503
        bad = await raw(app.proxy.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400")
    ok, missing, down, rejected = lines(log)  # written out by the time the gateway stopped
    assert ok["status"] == 200 and ok["request_method"] == "GET" and ok["host"] == "shop.example.com"
    assert ok["request_uri"] == "/cart?id=7" and ok["server_protocol"] == "HTTP/1.1"
    assert ok["remote_addr"] == "127.0.0.1" and ok["request_id"] == request_id
    assert ok["http_user_agent"] == "probe/1.0" and ok["http_referer"] == 'https://example.com/"quoted"'
    assert ok["body_bytes_sent"] == len(body) > 0
    assert ok["upstream_addr"] == f"{up.host}:{up.port}" and ok["upstream_cluster"] == "east"
    assert ok["upstream_attempts"] == 1 and ok["route"] == "demo/shop|shop.example.com/"
    assert 0 <= ok["upstream_response_time"] <= ok["request_time"] < 5
    assert ok["time"].endswith("Z") and len(ok["time"]) == len("2026-11-25T02:00:00.123Z")
    assert missing["status"] == 404 and missing["request_method"] == "HEAD"
    assert missing["request_id"] == 'a"b\\c' and missing["request_uri"] == "/%C3%A9t%C3%A9"
    assert missing["upstream_addr"] == "" and missing["upstream_response_time"] is None
    assert missing["body_bytes_sent"] == 0  # HEAD: no body
    assert down["status"] == 503 and down["body_bytes_sent"] == len(b"no healthy upstream\n")
    assert rejected == {"time": rejected["time"], "remote_addr": "127.0.0.1", "status": 400}


async def test_enable_access_log_false_keeps_a_rules_requests_out(tmp_path: Path):
    """nginx `enable-access-log: "false"`: none of the rule's requests is logged, whatever
    their answer (proxied, denied, redirected); other rules and unmatched requests are."""
    log = tmp_path / "access.log"
    quiet = {"nginx.ingress.kubernetes.io/enable-access-log": "false"}
    ings = [ingress("shop", "shop.example.com", "web"),
            ingress("health", "health.example.com", "web", quiet),
            ingress("closed", "closed.example.com", "web",
                    {**quiet, "nginx.ingress.kubernetes.io/allowlist-source-range": "10.0.0.0/8"}),
            ingress("bad", "bad.example.com", "web", {"nginx.ingress.kubernetes.io/enable-access-log": "nope"})]
    async with gateway_over(ings, "127.0.75.1", access_log=str(log)) as (app, up):
        url = f"http://127.0.0.1:{app.proxy.port}/x"
        async with aiohttp.ClientSession() as s:
            for host, status in (("health.example.com", 200), ("closed.example.com", 403),
                                 ("shop.example.com", 200), ("health.example.com", 200),
                                 ("nowhere.example.com", 404), ("bad.example.com", 200)):
                async with s.get(url, headers={"Host": host}) as r:
                    assert r.status == status, host
        routes = {r["ingress"]: r for r in app.table.describe()}
        assert routes["demo/health"]["accessLog"] is False and routes["demo/shop"]["accessLog"] is True
        assert any("enable-access-log" in str(p) and "'nope' is not a boolean" in str(p) for p in app.problems)
    assert [(line["host"], line["status"]) for line in lines(log)] == [
        ("shop.example.com", 200), ("nowhere.example.com", 404), ("bad.example.com", 200)]


async def test_a_client_gone_before_the_answer_is_logged_499(tmp_path: Path):
    log = tmp_path / "access.log"
    async with gateway_over([ingress("shop", "shop.example.com", "web")], "127.0.75.2",
                            access_log=str(log)) as (app, up):
        up.delay = 1.0  # the pod answers late
        reader, writer = await asyncio.open_connection("127.0.0.1", app.proxy.port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        await asyncio.sleep(0.2)
    (gone,) = lines(log)
    assert gone["status"] == 499 and gone["request_uri"] == "/slow"


async def test_a_log_nobody_reads_drops_whole_lines_and_never_holds_up_the_loop(tmp_path: Path):
    """A FIFO whose reader is stuck: writes never block; what the pipe does not take waits
    (up to MAX_PENDING) and past that whole lines are dropped and counted, so what the reader
    gets at last is whole lines only."""
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    read_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    log = AccessLog(str(fifo))
    peer = Peer("127.0.0.1", 8080, "http")
    lines_sent = 0
    start = time.monotonic()
    while lines_sent < 2 * access_log_module.MAX_PENDING // 60:  # twice what may wait
        for _ in range(1000):
            log.rejected(peer, 400)
        lines_sent += 1000
        log.flush()
    assert time.monotonic() - start < 2.0
    dropped = log.dropped._value.get()
    waiting = log._pending.count(b"\n")
    assert dropped > 0 and log.written + dropped + waiting == lines_sent
    got = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read_end, 1 << 20):
            got += chunk
            log.flush()  # the rest, now that there is room
    log.close()
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read_end, 1 << 20):
            got += chunk
    os.close(read_end)
    records = [json.loads(line) for line in got.splitlines()]  # every line whole
    assert len(records) + dropped == lines_sent and all(r["status"] == 400 for r in records)


def test_cli_names_an_access_log_it_cannot_open(tmp_path: Path):
    (tmp_path / "fleet.yaml").write_text("clusters: []\n")
    done = subprocess.run([sys.executable, "-m", "gateway", "--config", str(tmp_path / "fleet.yaml"),
                           "--access-log", str(tmp_path / "no" / "such" / "dir.log")],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "--access-log" in done.stderr and "No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr


async def test_sigusr1_reopens_the_log_after_a_rotation(tmp_path: Path):
    """logrotate renames the file, then `kill -USR1`: later lines go to a new file at the path."""
    log = tmp_path / "access.log"
    async with gateway_process(tmp_path, "--access-log", str(log), "--shutdown-delay", "0") as (
            proc, port, _, _):
        async with aiohttp.ClientSession() as s:
            await eventually(lambda: log.exists() and log.read_text().count("\n") >= 1,
                             within=3.0)  # the start-up probe's request, flushed
            rotated = tmp_path / "access.log.1"
            log.rename(rotated)
            before = rotated.read_text().count("\n")
            proc.send_signal(signal.SIGUSR1)
            await eventually(lambda: log.exists(), within=3.0)
            async with s.get(f"http://127.0.0.1:{port}/after", headers={"Host": "shop.example.com"}) as r:
                assert r.status == 200
            await eventually(lambda: "/after" in log.read_text(), within=3.0)
        assert "/after" not in rotated.read_text() and rotated.read_text().count("\n") == before
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == 0
