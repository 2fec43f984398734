"""ssl-passthrough (`--enable-ssl-passthrough`, gateway/proxy/passthrough.py and
gateway/routing/passthrough.py): the ClientHello reader against real ClientHellos, the
route building (table-driven), and real TLS clients through the gateway to a TLS backend
that terminates the connection itself."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest
from netkit import silent_listener
from prometheus_client import generate_latest
from test_gw_backend_tls import tls_service
from test_gw_routing_kit import NGX, OURS, build, ingress, path, problems_for, rule, simple
from test_gw_tls import CA, cn, https_get, served, started, stopped
from test_gw_tls import ingress as tls_ingress
from test_gw_tls import secret as tls_secret

from gateway.__main__ import parse_args
from gateway.proxy import Limits
from gateway.proxy.passthrough import NEED_MORE, client_hello_sni

PT = {NGX + "ssl-passthrough": "true"}
BACKEND_IP = "127.0.81.1"


def client_hello(server_name: str | None) -> bytes:
    """The first flight of a real TLS client (OpenSSL through Python's ssl)."""
    ctx = ssl.create_default_context()
    if server_name is None:
        ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_client_hello_server_name():
    hello = client_hello("PT.example.com")
    assert client_hello_sni(hello) == "pt.example.com"
    assert client_hello_sni(hello + b"more records") == "pt.example.com"
    assert client_hello_sni(client_hello(None)) is None
    for cut in (0, 3, 5, 100, len(hello) - 1):
        assert client_hello_sni(hello[:cut]) == NEED_MORE
    for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"):
        with pytest.raises(ValueError):
            client_hello_sni(junk)


def test_passthrough_hosts_are_the_rules_root_paths():
    main = ingress("pt", rule("pt.example.com", path("/", "main"), path("/api", "main")),
                   rule("*.wild.example.com", path("/", "main")), ann=PT)
    later = simple("later", host="pt.example.com", svc="other", ann=PT)
    table, problems = build(main, later, ssl_passthrough=True)
    assert table.passthrough.keys() == {"pt.example.com"}
    assert table.passthrough["pt.example.com"].service == "main"
    assert table.passthrough["pt.example.com"] in table.backends()  # its endpoints are tracked
    msgs = problems_for(problems, "default/pt", "ssl-passthrough")
    assert any("pt.example.com/api: only a host's '/' path" in m for m in msgs)
    assert any("*.wild.example.com: a passthrough host must be a full name" in m for m in msgs)
    assert any("already passed through by default/pt" in m
               for m in problems_for(problems, "default/later", "ssl-passthrough"))
    assert [d["host"] for d in table.describe_passthrough()] == ["pt.example.com"]
    table, problems = build(simple("pt", host="pt.example.com", ann=PT))
    assert table.passthrough == {}
    assert problems_for(problems, "default/pt", "ssl-passthrough") == [
        "needs the gateway's --enable-ssl-passthrough; ignored"]


def test_the_flag_needs_the_https_listener(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--config", "f.yaml", "--enable-ssl-passthrough"])
    assert "--enable-ssl-passthrough needs --listen-tls" in capsys.readouterr().err
    assert parse_args(["--config", "f.yaml", "--listen-tls", "127.0.0.1:0",
                       "--enable-ssl-passthrough"]).enable_ssl_passthrough
    with pytest.raises(SystemExit):
        parse_args(["--config", "f.yaml", "--ssl-passthrough-idle-timeout", "0"])
    assert "--ssl-passthrough-idle-timeout: must be > 0" in capsys.readouterr().err


async def echo_tls_backend(ca: CA, name: str) -> asyncio.Server:
    """A pod that terminates TLS itself (its own certificate for `name`) and echoes."""
    ctx = ca.server_context(name)

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(b"backend:" + data)
            await w.drain()
        w.close()

    return await asyncio.start_server(echo, BACKEND_IP, 0, ssl=ctx)


def pt_ingress(annotations: dict | None = None) -> dict:
    """Ingress "pt": pt.example.com passed through to the `tlsweb` Service."""
    pt = tls_ingress("pt", ["pt.example.com"], annotations={**PT, **(annotations or {})})
    pt["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "tlsweb"
    return pt


async def pt_gateway(ca: CA, **kw) -> tuple[asyncio.Server, int, object, object]:
    """A gateway with --enable-ssl-passthrough: pt.example.com passed through to an echoing
    TLS backend, a.example.com terminated with its own certificate. The backend, its port,
    the app and its upstream (for `stopped`)."""
    backend = await echo_tls_backend(ca, "pt.example.com")
    port = backend.sockets[0].getsockname()[1]
    a = ca.issue("a.example.com")
    app, _, up = await started(
        [pt_ingress(), tls_ingress("a", ["a.example.com"], [{"hosts": ["a.example.com"], "secretName": "a-tls"}])],
        [tls_secret("a-tls", *a)], ssl_passthrough=True, **kw)
    return backend, port, app, up


async def test_passthrough_splices_tls_to_the_backend_and_terminates_the_rest():
    ca = CA()
    backend, port, app, up = await pt_gateway(ca)
    try:
        await tls_service(app, port, BACKEND_IP)
        tls_port = app.proxy_tls.port
        for _ in range(100):  # the endpoints reach the gateway
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", tls_port, ssl=ca.client_context(), server_hostname="pt.example.com")
                break
            except (ssl.SSLError, ConnectionError):
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("never passed through")
        # the backend's own certificate (verified against the CA for pt.example.com): unterminated
        der = writer.get_extra_info("ssl_object").getpeercert()
        assert dict(x[0] for x in der["subject"])["commonName"] == "pt.example.com"
        writer.write(b"hello")
        await writer.drain()
        assert await reader.readexactly(13) == b"backend:hello"
        writer.close()
        assert app.proxy_tls.passthrough.outcomes["spliced"] == 1
        # other names are terminated here, as without the flag
        assert cn(await served(tls_port, "a.example.com")) == "a.example.com"
        status, echo = await https_get(tls_port, "a.example.com", "/x", ca)
        assert status == 200 and echo["path"] == "/x"
        # not TLS at all: handed to the TLS proxy, which gives up on it; the listener goes on
        r, w = await asyncio.open_connection("127.0.0.1", tls_port)
        w.write(b"GET / HTTP/1.1\r\nHost: pt.example.com\r\n\r\n")
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        assert (await https_get(tls_port, "a.example.com", "/y", ca))[0] == 200
        scrape = generate_latest(app.registry).decode()
        assert 'gateway_ssl_passthrough_connections_total{outcome="spliced"} 1.0' in scrape
        assert 'gateway_ssl_passthrough_connections_total{outcome="terminated"} 4.0' in scrape
        # stopping the gateway closes the spliced connections still open
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", tls_port, ssl=ca.client_context(), server_hostname="pt.example.com")
        writer.write(b"x")
        assert await reader.readexactly(9) == b"backend:x"
        await stopped(app, up)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        if app.proxy_tls.passthrough is not None:  # (failed before the stop above)
            await stopped(app, up)
        backend.close()
        await backend.wait_closed()


async def passed_through(port: int, ca: CA) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection through the gateway to pt.example.com's backend, once it is there."""
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ca.client_context(), server_hostname="pt.example.com")
            writer.write(b"?")
            await writer.drain()
            assert await reader.readexactly(9) == b"backend:?"
            return reader, writer
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.05)
    raise AssertionError("never passed through")


async def test_passthrough_connects_feed_outlier_detection_and_idle_pairs_are_closed():
    """A pod refusing connections is ejected by passthrough connects alone (5 consecutive
    connect failures, as the proxy's own), each connection still reaching the live pod; a
    pair with no byte either way for the idle timeout is closed, a talking one is not."""
    ca = CA()
    backend = await echo_tls_backend(ca, "pt.example.com")
    port = backend.sockets[0].getsockname()[1]
    dead_ip = "127.0.81.2"
    held = socket.socket()  # bound, never listening: connects are refused
    held.bind((dead_ip, port))
    pt = pt_ingress({OURS + "outlier-max-ejection-percent": "50"})  # 1 of 2
    idle = 0.4
    app, hub, up = await started([pt], [], ssl_passthrough=True,
                                 limits=Limits(passthrough_idle_timeout=idle))
    try:
        await tls_service(app, port, BACKEND_IP, dead_ip)
        tls_port = app.proxy_tls.port
        ref = app.table.passthrough["pt.example.com"]
        for _ in range(12):  # round robin: about every other one tries the dead pod first
            _, writer = await passed_through(tls_port, ca)
            writer.close()
        state = {d["ip"]: d for d in app.upstream.describe(ref)}
        assert state[dead_ip]["ejected"] is True and state[BACKEND_IP]["ejected"] is False
        assert app.proxy_tls.passthrough.outcomes["unreachable"] == 0

        quiet_r, quiet_w = await passed_through(tls_port, ca)
        talk_r, talk_w = await passed_through(tls_port, ca)
        for i in range(8):  # 0.8 s: twice the idle timeout
            talk_w.write(b"%d" % i)
            assert await talk_r.readexactly(9) == b"backend:%d" % i
            await asyncio.sleep(idle / 4)
        assert await asyncio.wait_for(quiet_r.read(), 1) == b""  # closed for being idle
        assert app.proxy_tls.passthrough.outcomes["idle_closed"] == 1
        talk_w.write(b"!")
        assert await talk_r.readexactly(9) == b"backend:!"
        quiet_w.close()
        talk_w.close()
    finally:
        await stopped(app, up)
        backend.close()
        await backend.wait_closed()
        held.close()


async def test_a_passthrough_connect_that_hangs_times_out_and_the_other_pod_gets_it(caplog):
    """A pod whose connects hang (its accept queue is full) costs a connection sent to it one
    `passthrough_connect_timeout`, then the live pod takes the connection. The timeouts count
    as connect failures, so outlier detection ejects that pod after five and later
    connections do not wait."""
    ca = CA()
    backend = await echo_tls_backend(ca, "pt.example.com")
    port = backend.sockets[0].getsockname()[1]
    hung_ip, timeout = "127.0.81.3", 0.2
    pt = pt_ingress({OURS + "outlier-max-ejection-percent": "50"})  # 1 of 2
    with silent_listener(hung_ip, port):
        app, hub, up = await started([pt], [], ssl_passthrough=True,
                                     limits=Limits(passthrough_connect_timeout=timeout))
        try:
            await tls_service(app, port, BACKEND_IP, hung_ip)
            took = []
            for _ in range(12):
                t0 = time.monotonic()
                _, writer = await passed_through(app.proxy_tls.port, ca)
                took.append(time.monotonic() - t0)
                writer.close()
            slow = [t for t in took if t >= timeout]
            assert len(slow) == 5 and max(slow) < timeout + 1.0, took  # one timeout each
            assert all(t < timeout for t in took[-3:]), took
            state = {d["ip"]: d for d in app.upstream.describe(app.table.passthrough["pt.example.com"])}
            assert state[hung_ip]["ejected"] is True and state[BACKEND_IP]["ejected"] is False
            assert app.proxy_tls.passthrough.outcomes["unreachable"] == 0
            assert f"connect to {hung_ip}:{port} failed: timed out" in caplog.text
        finally:
            await stopped(app, up)
            backend.close()
            await backend.wait_closed()
