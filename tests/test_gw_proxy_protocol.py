"""`--proxy-protocol` (gateway/proxy/proxy_protocol.py, gateway/proxy/listener.py): the header
parser against the specification's forms (table-driven, every valid header cut at every
length), then HAProxy in front of both listeners sending v1 and v2 headers, with real HTTP and
TLS clients behind it: the client's address reaches the pod, the access log and
allowlist-source-range; a connection without a header is closed unanswered; a LOCAL header
(a balancer's health check) is served with the peer's address; ssl-passthrough reads the
header before the ClientHello."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from fleetkit import eventually
from netkit import free_port
from prometheus_client import generate_latest
from test_gw_backend_tls import tls_service
from test_gw_passthrough import BACKEND_IP, pt_gateway
from test_gw_routing_kit import NGX
from test_gw_tls import CA, ingress, secret, started, stopped

from gateway.__main__ import parse_args
from gateway.proxy import Limits
from gateway.proxy.proxy_protocol import (
    NEED_MORE,
    V2_SIGNATURE,
    ProxyProtocolError,
    parse_proxy_header,
)

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
CLIENT, OTHER_CLIENT = "127.0.0.9", "127.0.0.10"  # where clients connect to HAProxy from
BALANCER = "127.0.0.2"  # where HAProxy connects to the gateway from


def v2(command: int, family: int, addresses: bytes = b"", tlvs: bytes = b"") -> bytes:
    """A version 2 header: signature, version+command, family+transport, length, body."""
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + len(body).to_bytes(2, "big") + body


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))


TLV_NOOP = bytes([0x04, 0x00, 0x03]) + b"abc"  # PP2_TYPE_NOOP with three bytes

VALID = [  # header, the source it names (None: the connection's own)
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n", ("192.0.2.7", 56324)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n", ("2001:db8::1", 4711)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None),
    (v2(1, 0x11, inet("192.0.2.7", "198.51.100.1", 56324, 443)), ("192.0.2.7", 56324)),
    (v2(1, 0x11, inet("192.0.2.7", "198.51.100.1", 56324, 443), TLV_NOOP), ("192.0.2.7", 56324)),
    (v2(1, 0x21, inet("2001:db8::1", "2001:db8::2", 4711, 443)), ("2001:db8::1", 4711)),
    (v2(1, 0x12, inet("192.0.2.8", "198.51.100.1", 53, 53)), ("192.0.2.8", 53)),  # UDP: still an address
    (v2(0, 0x00), None),  # LOCAL: health checks
    (v2(0, 0x11, inet("192.0.2.7", "198.51.100.1", 1, 2)), None),  # LOCAL ignores addresses
    (v2(1, 0x00, TLV_NOOP), None),  # UNSPEC
    (v2(1, 0x31, b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")), None),  # UNIX
]

INVALID = [  # first bytes, what the error says
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "no PROXY protocol header: the connection starts with b'GET / HTTP/1.1"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "no PROXY protocol header"),  # a ClientHello
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n", "expected 'PROXY TCP4|TCP6 <source>"),
    (b"PROXY TCP4 192.0.2.7  198.51.100.1 1 2\r\n", "expected 'PROXY TCP4|TCP6 <source>"),
    (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "v1 protocol 'TCP5': expected TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n", "v1 source address '2001:db8::1' is not TCP4"),
    (b"PROXY TCP6 2001:db8::1 1.2.3.4 1 2\r\n", "v1 destination address '1.2.3.4' is not TCP6"),
    (b"PROXY TCP4 300.1.1.1 1.2.3.4 1 2\r\n", "v1 source address '300.1.1.1' is not an IP address"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", "v1 source port '65536' is not 0-65535"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 -2\r\n", "v1 destination port '-2' is not 0-65535"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 \xff 2\r\n", "v1 line is not ASCII"),
    (b"PROXY " + b"x" * 120, "v1 line without CRLF in its first 107 bytes"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2" + b" " * 80 + b"\r\n", "v1 line without CRLF"),
    (V2_SIGNATURE[:-1] + b"X\x21\x11", "no PROXY protocol header"),
    (v2(1, 0x11, inet("1.2.3.4", "1.2.3.4", 1, 2)).replace(b"\x21\x11", b"\x11\x11", 1),
     "v2 version 1: expected 2"),
    (v2(2, 0x11, inet("1.2.3.4", "1.2.3.4", 1, 2)), "v2 command 2: expected 0 (LOCAL) or 1 (PROXY)"),
    (v2(1, 0x41, inet("1.2.3.4", "1.2.3.4", 1, 2)), "v2 address family 4: expected 0-3"),
    (v2(1, 0x11, b"\x01" * 8), "v2 address block of 8 bytes: family 1 needs 12"),
    (v2(1, 0x21, inet("1.2.3.4", "1.2.3.4", 1, 2)), "v2 address block of 12 bytes: family 2 needs 36"),
    (V2_SIGNATURE + b"\x21\x11" + (5000).to_bytes(2, "big"), "v2 header of 5016 bytes: at most 4096"),
]


@pytest.mark.parametrize(("header", "source"), VALID)
def test_a_valid_header_names_its_source_and_is_waited_for_whole(header, source):
    found = parse_proxy_header(header + b"GET / HTTP/1.1\r\n")
    assert not isinstance(found, str)
    assert (found.length, found.source) == (len(header), source)
    assert found.version == (1 if header.startswith(b"PROXY") else 2)
    for cut in range(len(header)):
        assert parse_proxy_header(header[:cut]) == NEED_MORE, cut


@pytest.mark.parametrize(("data", "error"), INVALID)
def test_an_invalid_header_is_named(data, error):
    with pytest.raises(ProxyProtocolError) as caught:
        parse_proxy_header(data)
    assert error in str(caught.value)


def test_the_flag():
    assert parse_args(["--config", "f.yaml", "--proxy-protocol"]).proxy_protocol
    assert not parse_args(["--config", "f.yaml"]).proxy_protocol


# -- through HAProxy ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def haproxy(backends: dict[str, tuple[int, str]]) -> AsyncIterator[dict[str, int]]:
    """HAProxy in TCP mode, one frontend per name, each passing connections to the gateway's
    port with its `send-proxy*` option from BALANCER. Yields each frontend's port."""
    ports = {name: free_port() for name in backends}
    lines = ["global", "    maxconn 200", "defaults", "    mode tcp", "    timeout connect 2s",
             "    timeout client 10s", "    timeout server 10s"]
    for name, (port, option) in backends.items():
        lines += [f"listen {name}", f"    bind 127.0.0.1:{ports[name]}",
                  f"    server gw 127.0.0.1:{port} {option} source {BALANCER}"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        proc = await asyncio.create_subprocess_exec(HAPROXY, "-db", "-f", str(cfg),
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            for port in ports.values():
                for _ in range(200):
                    try:
                        _, w = await asyncio.open_connection("127.0.0.1", port)
                        w.close()
                        break
                    except OSError:
                        assert proc.returncode is None, "haproxy exited"
                        await asyncio.sleep(0.02)
            yield ports
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 5)


async def get(url: str, host: str, local: str, ca: CA | None = None) -> tuple[int, dict]:
    """A GET from `local` (through HAProxy); the pod's JSON echo of what it received."""
    conn = aiohttp.TCPConnector(local_addr=(local, 0))
    tls = {"ssl": ca.client_context(), "server_hostname": host} if ca else {}
    async with aiohttp.ClientSession(connector=conn) as s, s.get(
            url, headers={"Host": host}, allow_redirects=False, **tls) as r:
        body = await r.text()
        return r.status, json.loads(body) if r.status == 200 else {}


def header(echo: dict, name: str) -> str | None:
    values = [v for k, v in echo["headers"] if k.lower() == name.lower()]
    return ", ".join(values) if values else None


needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="needs haproxy")


@needs_haproxy
async def test_behind_haproxy_the_client_address_is_the_headers_on_both_listeners(tmp_path):
    ca = CA()
    a = ca.issue("a.example.com")
    log = tmp_path / "access.log"
    app, hub, up = await started(
        [ingress("a", ["a.example.com"], [{"hosts": ["a.example.com"], "secretName": "a-tls"}],
                 annotations={NGX + "ssl-redirect": "false"}),
         ingress("only9", ["only9.example.com"], annotations={NGX + "allowlist-source-range": f"{CLIENT}/32"})],
        [secret("a-tls", *a)], proxy_protocol=True, access_log=str(log))
    try:
        async with haproxy({"v1": (app.proxy.port, "send-proxy"),
                            "v2": (app.proxy.port, "send-proxy-v2"),
                            "tls": (app.proxy_tls.port, "send-proxy-v2-ssl")}) as lb:
            for name in ("v1", "v2"):
                status, echo = await get(f"http://127.0.0.1:{lb[name]}/{name}", "a.example.com", CLIENT)
                assert status == 200, name
                assert header(echo, "X-Real-IP") == CLIENT and header(echo, "X-Forwarded-For") == CLIENT
                assert header(echo, "X-Forwarded-Proto") == "http"
            status, echo = await get(f"https://127.0.0.1:{lb['tls']}/tls", "a.example.com", CLIENT, ca)
            assert status == 200
            assert header(echo, "X-Real-IP") == CLIENT and header(echo, "X-Forwarded-Proto") == "https"
            # allowlist-source-range judges the header's address, not HAProxy's
            assert (await get(f"http://127.0.0.1:{lb['v2']}/", "only9.example.com", CLIENT))[0] == 200
            assert (await get(f"http://127.0.0.1:{lb['v1']}/", "only9.example.com", OTHER_CLIENT))[0] == 403
            # straight to the gateway without a header: closed, nothing answered
            for port in (app.proxy.port, app.proxy_tls.port):
                assert await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n") == b""
        await eventually(lambda: log.read_text().count("\n") == 5, within=3.0)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert {line["remote_addr"] for line in lines} == {CLIENT, OTHER_CLIENT}
        scrape = generate_latest(app.registry).decode()
        counts = {(m.group(1), m.group(2)): float(m.group(3)) for m in re.finditer(
            r'gateway_proxy_protocol_connections_total\{listener="(\w+)",outcome="(\w+)"\} (\S+)', scrape)}
        # (HAProxy's own connections while the test waited for its ports are proxied too)
        assert counts[("http", "proxied")] >= 4 and counts[("https", "proxied")] >= 1
        assert counts[("http", "rejected")] == counts[("https", "rejected")] == 1
        assert counts[("http", "timeout")] == counts[("https", "local")] == 0
    finally:
        await stopped(app, up)


async def raw_exchange(port: int, data: bytes, *pieces: bytes) -> bytes:
    """Send `data` (then each of `pieces` a little later) from CLIENT; the answer up to the
    close (the request says `Connection: close`); b"" for a connection closed (or reset:
    closed with our bytes unread) without an answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(CLIENT, 0))
    writer.write(data)
    for piece in pieces:
        await asyncio.sleep(0.05)
        writer.write(piece)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def echoed(answer: bytes) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:200]
    return json.loads(body)


async def test_local_headers_split_headers_and_silent_connections():
    """A LOCAL header (a balancer's own connection) or v1 UNKNOWN is served with the peer's
    address; a header arriving in pieces is waited for; a connection that sends nothing is
    closed after the header timeout."""
    app, hub, up = await started([ingress("a", ["a.example.com"])], [], proxy_protocol=True,
                                 limits=Limits(header_timeout=0.3))
    request = b"GET /x HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n"
    try:
        port = app.proxy.port
        for first in (v2(0, 0x00), b"PROXY UNKNOWN\r\n"):
            echo = echoed(await raw_exchange(port, first + request))
            assert header(echo, "X-Real-IP") == CLIENT and echo["path"] == "/x"
        named = v2(1, 0x11, inet("192.0.2.7", "198.51.100.1", 56324, 80), TLV_NOOP)
        echo = echoed(await raw_exchange(port, named[:5], named[5:20], named[20:] + request))
        assert header(echo, "X-Real-IP") == "192.0.2.7"
        v1 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 80\r\n"
        echo = echoed(await raw_exchange(port, v1[:12], v1[12:] + request[:10], request[10:]))
        assert header(echo, "X-Forwarded-For") == "2001:db8::7"
        # a client's own X-Forwarded-For stays in front of the header's address (no
        # --trusted-proxy); its X-Real-IP is replaced
        echo = echoed(await raw_exchange(port, v1 + request.replace(
            b"\r\n\r\n", b"\r\nX-Forwarded-For: 203.0.113.5\r\nX-Real-IP: 6.6.6.6\r\n\r\n")))
        assert header(echo, "X-Forwarded-For") == "203.0.113.5, 2001:db8::7"
        assert header(echo, "X-Real-IP") == "2001:db8::7"
        assert await raw_exchange(port, b"") == b""  # nothing sent: closed at the timeout
        assert await raw_exchange(port, b"PROXY TCP4 1.2.3.4 ") == b""  # half a header: the same
        assert app.proxy.acceptor is not None
        assert app.proxy.acceptor.headers == {"proxied": 3, "local": 2, "rejected": 0, "timeout": 2, "closed": 0}
    finally:
        await stopped(app, up)


async def test_ssl_passthrough_reads_the_header_before_the_client_hello():
    """The header is taken off before the ClientHello is peeked at: a passthrough host's
    backend gets the TLS bytes alone, a terminated host is served as usual."""
    ca = CA()
    backend, port, app, up = await pt_gateway(ca, proxy_protocol=True)
    try:
        await tls_service(app, port, BACKEND_IP)
        tls_port = app.proxy_tls.port
        proxy_line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"
        for _ in range(100):  # the endpoints reach the gateway
            sock = socket.create_connection(("127.0.0.1", tls_port))
            sock.sendall(proxy_line)
            try:
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=ca.client_context(), server_hostname="pt.example.com")
                writer.write(b"hello")
                assert await reader.readexactly(13) == b"backend:hello"
                writer.close()
                break
            except (OSError, asyncio.IncompleteReadError):
                sock.close()
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("never passed through")
        sock = socket.create_connection(("127.0.0.1", tls_port))
        sock.sendall(proxy_line)
        reader, writer = await asyncio.open_connection(sock=sock, ssl=ca.client_context(),
                                                       server_hostname="a.example.com")
        writer.write(b"GET /t HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n")
        echo = echoed(await asyncio.wait_for(reader.read(), 5))
        writer.close()
        assert header(echo, "X-Real-IP") == "192.0.2.7" and echo["path"] == "/t"
        assert app.proxy_tls.passthrough is not None
        assert app.proxy_tls.passthrough.outcomes["spliced"] == 1
    finally:
        await stopped(app, up)
        backend.close()
        await backend.wait_closed()
