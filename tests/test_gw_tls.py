"""TLS termination: spec.tls + kubernetes.io/tls Secrets, SNI, the default certificate, and
ingress-nginx's ssl-redirect/force-ssl-redirect, through real TLS and HTTP clients against
the gateway over an embedded fleet."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fleetkit import eventually
from gwkit import Upstream
from netkit import free_port
from test_gw_app import world

from gateway.app import GatewayApp
from gateway.routing import BuildOptions, build_route_table
from gateway.tls import DEFAULT_CN, CertificateStore, TLSProblem
from gateway.types import RequestView
from mcs_controller.access.resources import EVENTS, INGRESSES, SECRETS

NGINX = "nginx.ingress.kubernetes.io/"
MSE = "mse.ingress.kubernetes.io/"
UP_IP = "127.0.80.1"


# -- certificates --------------------------------------------------------------------------


class CA:
    """A test certificate authority (EC keys: fast) and the leaf certificates it signs."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "amcs test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *names: str) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    def server_context(self, name: str) -> ssl.SSLContext:
        """A pod's own TLS: a certificate for `name` this CA issues (load_cert_chain reads files)."""
        crt, key = self.issue(name)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
            f.write(crt + key)
            f.flush()
            ctx.load_cert_chain(f.name)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """What a real client does: trust this CA, verify the chain and the host name."""
        return ssl.create_default_context(cadata=self.pem.decode())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def secret(name: str, crt: bytes | None, key: bytes | None,
           kind: str = "kubernetes.io/tls") -> dict:
    data = {}
    if crt is not None:
        data["tls.crt"] = b64(crt)
    if key is not None:
        data["tls.key"] = b64(key)
    return {"metadata": {"name": name, "namespace": "demo"}, "type": kind, "data": data}


def ingress(name: str, hosts: list[str], tls: list[dict] | None = None,
            annotations: dict | None = None) -> dict:
    spec: dict = {"ingressClassName": "amcs", "rules": [
        {"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
            "service": {"name": "web", "port": {"number": 80}}}}]}} for h in hosts]}
    if tls is not None:
        spec["tls"] = tls
    return {"metadata": {"name": name, "namespace": "demo", "annotations": annotations or {}},
            "spec": spec}


def insecure() -> ssl.SSLContext:
    """A client that accepts any certificate: to look at the one served."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def served(port: int, sni: str | None) -> x509.Certificate:
    """The leaf certificate the listener presents for this SNI name (None: no SNI)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=insecure(),
                                              server_hostname=sni or "")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


def names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        return []


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def http_get(url: str, host: str, headers: dict | None = None,
                   local: str | None = None) -> tuple[int, str | None, str]:
    conn = aiohttp.TCPConnector(local_addr=(local, 0) if local else None)
    async with aiohttp.ClientSession(connector=conn) as s, s.get(
            url, headers={"Host": host, **(headers or {})}, allow_redirects=False) as r:
        return r.status, r.headers.get("Location"), await r.text()


async def https_get(port: int, host: str, path: str, ca: CA) -> tuple[int, dict]:
    """aiohttp over TLS with SNI `host`, verifying the chain and the name against `ca`."""
    async with aiohttp.ClientSession() as s, s.get(
            f"https://127.0.0.1:{port}{path}", headers={"Host": host}, ssl=ca.client_context(),
            server_hostname=host) as r:
        return r.status, json.loads(await r.text()) if r.status == 200 else {}


async def started(tls_ingresses: list[dict], secrets: list[dict], **kw) -> tuple:
    up = await Upstream("east", host=UP_IP).start()
    hub, members = await world({"east": up})
    for obj in secrets:
        await hub.create(SECRETS, obj)
    for obj in tls_ingresses:
        await hub.create(INGRESSES, obj)
    app = GatewayApp(hub, members, listen=("127.0.0.1", 0), admin=None,
                     listen_tls=("127.0.0.1", 0), **kw)
    await app.start()
    await app.wait_ready()
    return app, hub, up


async def stopped(app: GatewayApp, up: Upstream) -> None:
    await app.stop(grace=0.5)
    await up.stop()


# -- tests ---------------------------------------------------------------------------------


async def test_sni_picks_each_certificate_wildcard_and_default_then_proxies_with_https_headers():
    ca = CA()
    a, b, wild = ca.issue("a.example.com"), ca.issue("b.example.com"), ca.issue("*.wild.example.com")
    app, hub, up = await started(
        [ingress("a", ["a.example.com"], [{"hosts": ["a.example.com"], "secretName": "a-tls"}]),
         ingress("b", ["b.example.com", "x.wild.example.com"],
                 [{"hosts": ["b.example.com"], "secretName": "b-tls"},
                  {"hosts": ["*.wild.example.com"], "secretName": "wild-tls"}])],
        [secret("a-tls", *a), secret("b-tls", *b), secret("wild-tls", *wild)])
    try:
        port = app.proxy_tls.port
        assert names(await served(port, "a.example.com")) == ["a.example.com"]
        assert names(await served(port, "B.Example.COM")) == ["b.example.com"]
        assert names(await served(port, "x.wild.example.com")) == ["*.wild.example.com"]
        # one label only; unknown names and no SNI at all: the default certificate
        for sni in ("a.b.wild.example.com", "wild.example.com", "unknown.example.org", None):
            assert cn(await served(port, sni)) == DEFAULT_CN, sni
        # a verifying client over the https listener: proxied, with the https headers
        status, echo = await https_get(port, "a.example.com", "/hello?x=1", ca)
        assert status == 200 and echo["path"] == "/hello?x=1"
        headers = {k.lower(): v for k, v in echo["headers"]}
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-forwarded-port"] == str(port)
        assert (await https_get(port, "x.wild.example.com", "/w", ca))[0] == 200
        # a verifying client refuses the default certificate for a name it does not cover
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await https_get(port, "a.b.wild.example.com", "/", ca)
        # the plain listener redirects the TLS hosts: 308, request URI kept, https port named
        http = f"http://127.0.0.1:{app.proxy.port}"
        status, location, body = await http_get(f"{http}/shop/item?id=7&q=a%20b", "a.example.com")
        assert (status, location) == (308, f"https://a.example.com:{port}/shop/item?id=7&q=a%20b")
        assert location in body
        # ingress-nginx drops one trailing slash (preserve-trailing-slash: false)
        assert (await http_get(f"{http}/dir/", "a.example.com:8080"))[1] == (
            f"https://a.example.com:{port}/dir")
        assert (await http_get(f"{http}/w", "x.wild.example.com"))[1] == (
            f"https://x.wild.example.com:{port}/w")
        routes = app.table.describe()
        assert {r["host"]: r["httpsRedirect"]["status"] for r in routes} == {
            "a.example.com": 308, "b.example.com": 308, "x.wild.example.com": 308}
    finally:
        await stopped(app, up)


async def test_affinity_cookie_is_secure_over_https_unless_the_annotation_says():
    """session-cookie-secure unset: the sticky cookie is marked Secure on the HTTPS listener
    only (ingress-nginx: secure = $https == "on"); "false" never marks it."""
    ca = CA()
    cert = ca.issue("s.example.com")
    n = "nginx.ingress.kubernetes.io/"
    sticky = {n + "affinity": "cookie", n + "ssl-redirect": "false"}
    app, hub, up = await started(
        [ingress("s", ["s.example.com"], [{"hosts": ["s.example.com"], "secretName": "s-tls"}],
                 sticky),
         ingress("t", ["t.example.com"], [{"hosts": ["t.example.com"], "secretName": "s-tls"}],
                 {**sticky, n + "session-cookie-secure": "false"})],
        [secret("s-tls", *cert)])
    try:
        async def cookie(scheme: str, port: int, host: str) -> str:
            async with aiohttp.ClientSession() as s, s.get(
                    f"{scheme}://127.0.0.1:{port}/", headers={"Host": host},
                    ssl=insecure() if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None) as r:
                assert r.status == 200
                return r.headers["Set-Cookie"]
        over_https = await cookie("https", app.proxy_tls.port, "s.example.com")
        over_http = await cookie("http", app.proxy.port, "s.example.com")
        assert over_https.startswith("INGRESSCOOKIE=") and "; Secure" in over_https
        assert over_http.startswith("INGRESSCOOKIE=") and "Secure" not in over_http
        assert "Secure" not in await cookie("https", app.proxy_tls.port, "t.example.com")
    finally:
        await stopped(app, up)


async def _hsts(scheme: str, port: int, host: str, path: str = "/") -> str | None:
    async with aiohttp.ClientSession() as s, s.get(
            f"{scheme}://127.0.0.1:{port}{path}", headers={"Host": host}, allow_redirects=False,
            ssl=insecure() if scheme == "https" else None,
            server_hostname=host if scheme == "https" else None) as r:
        assert r.status == 200, (scheme, host, r.status)
        values = r.headers.getall("Strict-Transport-Security", [])
        assert len(values) <= 1, values
        return values[0] if values else None


async def test_hsts_on_https_responses_for_hosts_with_a_certificate():
    """ingress-nginx's hsts defaults: max-age one year with includeSubDomains, on HTTPS
    responses of hosts with a certificate; not on plain HTTP, not for other hosts."""
    ca = CA()
    n = "nginx.ingress.kubernetes.io/"
    app, hub, up = await started(
        [ingress("h", ["h.example.com"],
                 [{"hosts": ["h.example.com", "bare.example.com"], "secretName": "h-tls"}],
                 {n + "ssl-redirect": "false"}),
         ingress("p", ["plain.example.com"])],
        [secret("h-tls", *ca.issue("h.example.com", "bare.example.com"))])
    try:
        tls, plain = app.proxy_tls.port, app.proxy.port
        # the gateway's own answers carry it too (a certified host no rule serves: 404)
        async with aiohttp.ClientSession() as s, s.get(
                f"https://127.0.0.1:{tls}/", headers={"Host": "bare.example.com"}, ssl=insecure(),
                server_hostname="bare.example.com") as r:
            assert r.status == 404
            assert r.headers.getall("Strict-Transport-Security") == [
                "max-age=31536000; includeSubDomains"]
        assert await _hsts("https", tls, "h.example.com") == "max-age=31536000; includeSubDomains"
        assert await _hsts("http", plain, "h.example.com") is None
        assert await _hsts("https", tls, "plain.example.com") is None  # no certificate configured
        # the upstream's own header is replaced (ingress-nginx more_set_headers), elsewhere kept
        assert await _hsts("https", tls, "h.example.com", "/sts") == "max-age=31536000; includeSubDomains"
        assert await _hsts("https", tls, "plain.example.com", "/sts") == "max-age=60"
    finally:
        await stopped(app, up)
    app, hub, up = await started(
        [ingress("h", ["h.example.com"], [{"hosts": ["h.example.com"], "secretName": "h-tls"}])],
        [secret("h-tls", *ca.issue("h.example.com"))], hsts="")
    try:
        assert await _hsts("https", app.proxy_tls.port, "h.example.com") is None  # turned off
    finally:
        await stopped(app, up)


async def test_ssl_redirect_false_force_ssl_redirect_and_trusted_forwarded_proto():
    ca = CA()
    c = ca.issue("c.example.com", "d.example.com")
    app, hub, up = await started(
        [ingress("c", ["c.example.com"], [{"hosts": ["c.example.com"], "secretName": "c-tls"}],
                 {f"{NGINX}ssl-redirect": "false"}),
         ingress("d", ["d.example.com"], [{"hosts": ["d.example.com"], "secretName": "c-tls"}],
                 {f"{NGINX}preserve-trailing-slash": "true"}),
         ingress("force", ["force.example.com"], None, {f"{MSE}force-ssl-redirect": "true"}),
         ingress("plain", ["plain.example.com"])],
        [secret("c-tls", *c)], https_redirect_port=443, xff_trusted=["127.0.0.2/32"])
    try:
        http = f"http://127.0.0.1:{app.proxy.port}"
        assert (await http_get(f"{http}/x", "c.example.com"))[0] == 200  # ssl-redirect: false
        assert (await http_get(f"{http}/x", "plain.example.com"))[0] == 200  # no tls section
        # force-ssl-redirect (mse. prefix) without any tls section; port 443 is left out
        assert (await http_get(f"{http}/f/?a=b", "force.example.com"))[:2] == (
            308, "https://force.example.com/f/?a=b")
        assert (await http_get(f"{http}/keep/", "d.example.com"))[1] == (
            "https://d.example.com/keep/")
        # behind a trusted TLS-terminating proxy: X-Forwarded-Proto https is not redirected,
        # an untrusted peer's header changes nothing, and "http" from the proxy still redirects
        fwd = {"X-Forwarded-Proto": "https"}
        assert (await http_get(f"{http}/x", "force.example.com", fwd, local="127.0.0.2"))[0] == 200
        assert (await http_get(f"{http}/x", "force.example.com", fwd))[0] == 308
        assert (await http_get(f"{http}/x", "d.example.com", {"X-Forwarded-Proto": "http"},
                               local="127.0.0.2"))[0] == 308
        # the https listener never redirects and serves the same rules
        assert (await https_get(app.proxy_tls.port, "d.example.com", "/s", ca))[0] == 200
        assert not app.problems
    finally:
        await stopped(app, up)


async def test_rotated_secret_is_served_within_a_second_and_open_connections_keep_working():
    ca = CA()
    old, new = ca.issue("rot.example.com"), ca.issue("rot.example.com")
    app, hub, up = await started(
        [ingress("rot", ["rot.example.com"], [{"hosts": ["rot.example.com"], "secretName": "rot-tls"}])],
        [secret("rot-tls", *old)])
    try:
        port = app.proxy_tls.port
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ca.client_context(), server_hostname="rot.example.com")
        request = b"GET /one HTTP/1.1\r\nHost: rot.example.com\r\n\r\n"

        async def exchange() -> bytes:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            return head

        assert (await exchange()).startswith(b"HTTP/1.1 200")
        old_serial = x509.load_pem_x509_certificate(old[0]).serial_number
        new_serial = x509.load_pem_x509_certificate(new[0]).serial_number
        assert (await served(port, "rot.example.com")).serial_number == old_serial
        start = asyncio.get_running_loop().time()
        await hub.patch(SECRETS, "demo", "rot-tls", {"data": {"tls.crt": b64(new[0]),
                                                              "tls.key": b64(new[1])}})

        async def rotated() -> bool:
            return (await served(port, "rot.example.com")).serial_number == new_serial

        await eventually(rotated, within=1.0)
        assert asyncio.get_running_loop().time() - start < 1.0
        # the connection opened before the rotation keeps its session and keeps working
        assert (await exchange()).startswith(b"HTTP/1.1 200")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert x509.load_der_x509_certificate(der).serial_number == old_serial
        writer.close()
        assert (await https_get(port, "rot.example.com", "/after", ca))[0] == 200
    finally:
        await stopped(app, up)


async def test_broken_secrets_get_the_default_certificate_a_named_problem_and_an_event():
    ca = CA()
    good, other = ca.issue("good.example.com"), ca.issue("elsewhere.example.com")
    mismatch = (good[0], ca.issue("good.example.com")[1])
    broken = {  # host -> (Secret or None, what the problem says)
        "missing.example.com": (None, "not found"),
        "opaque.example.com": (secret("opaque", *good, kind="Opaque"), "has type 'Opaque'"),
        "nokey.example.com": (secret("nokey", good[0], None), "has no tls.key"),
        "garbage.example.com": (secret("garbage", b"not a pem", good[1]),
                                "tls.crt is not a PEM certificate"),
        "mismatch.example.com": (secret("mismatch", *mismatch),
                                 "tls.key does not match the certificate"),
        "uncovered.example.com": (secret("uncovered", *other), "does not cover uncovered"),
    }
    ingresses = [ingress("good", ["good.example.com"],
                         [{"hosts": ["good.example.com"], "secretName": "good-tls"}])]
    for host in broken:
        name = host.split(".")[0]
        ingresses.append(ingress(name, [host], [{"hosts": [host], "secretName": name}]))
    app, hub, up = await started(
        ingresses, [secret("good-tls", *good)] + [s for s, _ in broken.values() if s])
    try:
        port = app.proxy_tls.port
        assert names(await served(port, "good.example.com")) == ["good.example.com"]
        for host in broken:
            assert cn(await served(port, host)) == DEFAULT_CN, host
        problems = [str(p) for p in app.problems]
        for host, (_, why) in broken.items():
            name = host.split(".")[0]
            assert any(p.startswith(f"ingress demo/{name}: tls secret demo/{name}: ")
                       and why in p for p in problems), (host, problems)
        assert len(problems) == len(broken)

        async def events() -> list:
            items = (await hub.list(EVENTS, "demo")).items
            return items if len(items) == len(broken) else []

        recorded = await eventually(events, within=1.0)
        assert {e["reason"] for e in recorded} == {"TLSSecretInvalid"}
        assert {e["involvedObject"]["name"] for e in recorded} == {
            h.split(".")[0] for h in broken}
        # as in ingress-nginx, a host with a bad Secret is still redirected (the default
        # certificate is configured for it), and everything keeps serving
        http = f"http://127.0.0.1:{app.proxy.port}"
        assert (await http_get(f"{http}/", "missing.example.com"))[0] == 308
        assert (await https_get(port, "good.example.com", "/ok", ca))[0] == 200
        status, _ = await asyncio.wait_for(_insecure_get(port, "missing.example.com"), 5)
        assert status == 200
        # fixing the Secret clears the problem and serves its certificate
        fixed = ca.issue("missing.example.com")
        await hub.create(SECRETS, secret("missing", *fixed))

        async def healed() -> bool:
            return names(await served(port, "missing.example.com")) == ["missing.example.com"]

        await eventually(healed, within=1.0)
        assert not any("demo/missing" in str(p) for p in app.problems)
    finally:
        await stopped(app, up)


async def _insecure_get(port: int, host: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(
            f"https://127.0.0.1:{port}/", headers={"Host": host}, ssl=insecure(),
            server_hostname=host) as r:
        return r.status, await r.text()


def test_sni_on_uvloop():
    """The same handshake path on uvloop (what `python -m gateway` runs on)."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        ca = CA()
        cert = ca.issue("uv.example.com")
        app, hub, up = await started(
            [ingress("uv", ["uv.example.com"], [{"hosts": ["uv.example.com"], "secretName": "uv"}])],
            [secret("uv", *cert)])
        try:
            port = app.proxy_tls.port
            assert names(await served(port, "uv.example.com")) == ["uv.example.com"]
            assert cn(await served(port, None)) == DEFAULT_CN
            status, echo = await https_get(port, "uv.example.com", "/uv", ca)
            assert status == 200 and echo["path"] == "/uv"
        finally:
            await stopped(app, up)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# -- the certificate store alone -------------------------------------------------------------


def test_store_caches_contexts_by_secret_data_and_keeps_key_files_private():
    ca = CA()
    one, two = ca.issue("a.example.com", "*.b.example.com"), ca.issue("a.example.com")
    secrets = {("demo", "s"): secret("s", *one)}
    ing = ingress("x", ["a.example.com", "c.b.example.com"], [{"secretName": "s"}])
    older = ingress("o", ["z.example.com"], [{"hosts": ["a.example.com"], "secretName": "t"}])
    older["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    store = CertificateStore()
    try:
        lookup = secrets.get
        problems = store.update([("demo/x", ing)], lambda ns, n: lookup((ns, n)))
        # a tls entry without hosts covers the rule hosts its certificate covers
        assert not problems and store.hosts == {"a.example.com", "c.b.example.com"}
        ctx = store.select("a.example.com").context
        assert store.select("c.b.example.com").context is ctx
        assert store.select("d.c.b.example.com") is None and store.select(None) is None
        # a rebuild with the same data keeps the context; new data makes a new one
        store.update([("demo/x", ing)], lambda ns, n: lookup((ns, n)))
        assert store.select("a.example.com").context is ctx
        secrets[("demo", "s")] = secret("s", *two)
        store.update([("demo/x", ing)], lambda ns, n: lookup((ns, n)))
        assert store.select("a.example.com").context is not ctx
        # the older Ingress names another Secret for the host: it wins (its Secret is
        # missing, so the default certificate); a newer one listing the host is reported
        newer = ingress("n", ["a.example.com"], [{"hosts": ["a.example.com"], "secretName": "s"}])
        problems = store.update([("demo/o", older), ("demo/x", ing), ("demo/n", newer)],
                                lambda ns, n: lookup((ns, n)))
        assert store.select("a.example.com") is None
        assert [str(p) for p in problems] == [
            "ingress demo/o: tls secret demo/t: not found; its hosts get the default certificate",
            "ingress demo/n: tls host a.example.com: already served by demo/t of demo/o (the "
            "oldest Ingress wins); ignored"]
        assert all(isinstance(p, TLSProblem) and p.reason == "TLSSecretInvalid" for p in problems)
        described = store.describe()
        assert described["hosts"]["a.example.com"] == {"certificate": "default"}
        # keys touch the disk only inside a private directory, and only while loading
        private = Path(store._dir)
        assert private.stat().st_mode & 0o777 == 0o700 and list(private.iterdir()) == []
    finally:
        store.close()
    assert not private.exists()


# -- routing only: the redirect's precedence ---------------------------------------------------


def _route(table, host: str, path: str, headers: dict | None = None, scheme: str = "http"):
    return table.route(RequestView("GET", path, host, headers or {}, "10.0.0.1", scheme))


def test_redirect_precedence_app_root_explicit_redirect_canary_and_catch_all():
    ing = [
        ingress("root", ["root.example.com"], [{"hosts": ["root.example.com"]}],
                {f"{NGINX}app-root": "/app"}),
        ingress("perm", ["perm.example.com"], [{"hosts": ["perm.example.com"]}],
                {f"{NGINX}permanent-redirect": "https://elsewhere.example.org"}),
        ingress("wild", ["*.w.example.com", "a.w.example.com"]),
        ingress("canary", ["root.example.com"], None,
                {f"{NGINX}canary": "true", f"{NGINX}ssl-redirect": "false"}),
        {"metadata": {"name": "catchall", "namespace": "demo",
                      "annotations": {f"{NGINX}force-ssl-redirect": "true"}},
         "spec": {"ingressClassName": "amcs", "tls": [{"hosts": ["x.example.com"]}],
                  "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}},
    ]
    ing[3]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "web2"
    tls_hosts = {"root.example.com", "perm.example.com", "*.w.example.com"}
    table, problems = build_route_table(ing, [], BuildOptions(tls_hosts=tls_hosts, https_port=8443))
    # app-root answers "/" first (server level), with the listener's scheme
    assert _route(table, "root.example.com", "/").redirect.location == "http://root.example.com/app"
    assert _route(table, "root.example.com", "/x").redirect.location == (
        "https://root.example.com:8443/x")
    # an explicit redirect wins over the HTTPS one
    assert _route(table, "perm.example.com", "/x").redirect.location == "https://elsewhere.example.org"
    # a wildcard certificate counts for an exact host it covers (ingress-nginx's lookup)
    assert _route(table, "a.w.example.com", "/").redirect.status == 308
    assert _route(table, "b.w.example.com", "/q?").redirect.location == (
        "https://b.w.example.com:8443/q?")
    # the catch-all defaultBackend is never redirected, even with force-ssl-redirect
    assert _route(table, "other.example.com", "/").redirect is None
    # a canary's ssl-redirect is not applied (canary Ingresses take only canary annotations)
    assert any("canary" in str(p) and "ssl-redirect" in str(p) for p in problems)
    # an ACME HTTP-01 challenge path stays on plain HTTP (no-tls-redirect-locations), even
    # forced; its neighbour on the same host is redirected
    acme = ingress("acme", ["perm.example.com"], None, {f"{NGINX}force-ssl-redirect": "true"})
    acme["spec"]["rules"][0]["http"]["paths"] = [
        {"path": p, "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        for p in ("/.well-known/acme-challenge/tok3n", "/other")]
    acme_table, _ = build_route_table([acme], [], BuildOptions(tls_hosts={"perm.example.com"},
                                                                     https_port=8443))
    assert _route(acme_table, "perm.example.com", "/.well-known/acme-challenge/tok3n").redirect is None
    assert _route(acme_table, "perm.example.com", "/other").redirect.status == 308
    # the HTTPS listener shares the table: no HTTPS redirects there, and app-root uses https
    assert _route(table, "root.example.com", "/x", scheme="https").redirect is None
    assert _route(table, "root.example.com", "/", scheme="https").redirect.location == (
        "https://root.example.com/app")


# -- the command line ----------------------------------------------------------------------


async def _run_cli(*args: str) -> tuple[int | None, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    return proc.returncode, out, err


async def test_cli_bad_tls_flags_are_a_clear_error(tmp_path: Path):
    ca = CA()
    crt, key = ca.issue("default.example.com")
    (tmp_path / "tls.crt").write_bytes(crt)
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "other.key").write_bytes(ca.issue("x.example.com")[1])
    (tmp_path / "fleet.yaml").write_text("hub: {context: hub}\nclusters: []\n")
    base = ["--config", str(tmp_path / "fleet.yaml"), "--listen-tls", "127.0.0.1:0"]
    # a missing file, a key of another certificate: a clear error, exit 2, no traceback
    for cert_file, key_file, says in (
            (tmp_path / "nope.crt", tmp_path / "tls.key", "cannot read"),
            (tmp_path / "tls.crt", tmp_path / "other.key", "matching private key")):
        rc, _, err = await _run_cli(*base, "--default-tls-cert", str(cert_file),
                                    "--default-tls-key", str(key_file))
        text = err.decode()
        assert rc == 2 and says in text and "Traceback" not in text, text
        assert text.startswith("gateway: default TLS certificate: "), text
    rc, _, err = await _run_cli(*base, "--default-tls-cert", str(tmp_path / "tls.crt"))
    assert rc == 2 and b"go together" in err and b"Traceback" not in err


async def test_cli_https_listener_serves_the_given_default_certificate(tmp_path: Path):
    ca = CA()
    crt, key = ca.issue("default.example.com")
    (tmp_path / "tls.crt").write_bytes(crt)
    (tmp_path / "tls.key").write_bytes(key)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: hub\n"
        "clusters: [{name: hub, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: hub, user: {}}]\n"
        "contexts: [{name: hub, context: {cluster: hub, user: hub}}]\n")
    (tmp_path / "fleet.yaml").write_text(
        f"kubeconfig: {kubeconfig}\nhub: {{context: hub}}\n"
        "clusters: [{name: east, context: hub}]\n")
    https = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(tmp_path / "fleet.yaml"),
        "--listen", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{free_port()}",
        "--listen-tls", f"127.0.0.1:{https}", "--default-tls-cert", str(tmp_path / "tls.crt"),
        "--default-tls-key", str(tmp_path / "tls.key"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out = b""
        while b"https" not in out:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line, (await proc.stderr.read()).decode()[-2000:]
            out += line
        assert f"gateway listening on https 127.0.0.1:{https}".encode() in out
        assert names(await served(https, "anything.example.com")) == ["default.example.com"]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0, (await proc.stderr.read()).decode()[-2000:]

