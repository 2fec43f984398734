"""Client-certificate authentication (ingress-nginx auth-tls-*): the annotations, the host-wide
merge, the per-request decision table, and real TLS clients (aiohttp, openssl s_client)
with and without certificates against the gateway's HTTPS listener."""

from __future__ import annotations

import asyncio
import datetime
import json
import shutil
import ssl
import tempfile
from urllib.parse import unquote

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_gw_tls import CA, b64, http_get, ingress, secret, started, stopped

from gateway.client_auth import native
from gateway.routing import BuildOptions, build_route_table
from gateway.routing.clientcert import (
    BAD_CERTIFICATE,
    MISDIRECTED,
    NO_CERTIFICATE,
    NO_PEER,
    ClientCertCheck,
    ClientCertPolicy,
    PeerCertificate,
    parse_client_cert,
)
from gateway.routing.values import Annotations
from gateway.types import RequestView
from mcs_controller.access.resources import SECRETS

NGINX = "nginx.ingress.kubernetes.io/"
OPENSSL = shutil.which("openssl")


# -- the annotations -----------------------------------------------------------------------


@pytest.mark.parametrize("ann, policy, problem", [
    ({}, None, None),
    ({"auth-tls-verify-client": "on"}, None, "needs auth-tls-secret"),
    ({"auth-tls-secret": "ca"}, ClientCertPolicy(("demo", "ca")), None),
    ({"auth-tls-secret": "other/ca", "auth-tls-verify-client": "optional_no_ca",
      "auth-tls-verify-depth": "3", "auth-tls-error-page": "https://e.example.com/x",
      "auth-tls-pass-certificate-to-upstream": "true", "auth-tls-match-cn": "CN=a|CN=b"},
     ClientCertPolicy(("other", "ca"), "optional_no_ca", 3, "https://e.example.com/x", True,
                      "CN=a|CN=b"), None),
    ({"auth-tls-secret": "ca", "auth-tls-verify-client": "maybe"},
     ClientCertPolicy(("demo", "ca")), "'on' is used"),
    ({"auth-tls-secret": "ca", "auth-tls-verify-depth": "0"},
     ClientCertPolicy(("demo", "ca")), "out of range"),
    ({"auth-tls-secret": "ca", "auth-tls-error-page": "/relative"},
     ClientCertPolicy(("demo", "ca")), "not an http(s) URL"),
    ({"auth-tls-secret": "ca", "auth-tls-match-cn": "client1"},
     ClientCertPolicy(("demo", "ca")), "does not start with CN="),
    ({"auth-tls-secret": "ca", "auth-tls-match-cn": "CN=(a"},
     ClientCertPolicy(("demo", "ca"), match_cn="(?!)"), "answer 403"),
    ({"auth-tls-secret": "Not_A/Name!"}, ClientCertPolicy(("", "")), "answer 503"),
])
def test_annotations(ann, policy, problem):
    problems: list = []
    got = parse_client_cert(Annotations("demo/x", {NGINX + k: v for k, v in ann.items()},
                                        problems), "demo")
    assert got == policy
    assert [p.message for p in problems if problem and problem in p.message] or not problem
    assert bool(problems) == bool(problem)


# -- one request's decision ----------------------------------------------------------------

AUTH = object()  # the host's handshake settings (the TLS side's ClientAuth)
GOOD = PeerCertificate("h.example.com", AUTH, "SUCCESS", 0, "CN=client1", "CN=ca", "PEM%0A")
NONE = PeerCertificate("h.example.com", AUTH)
UNKNOWN_CA = PeerCertificate("h.example.com", AUTH, "FAILED:unable to verify", 21, "CN=x", "CN=y")
EXPIRED = PeerCertificate("h.example.com", AUTH, "FAILED:certificate has expired", 10, "CN=x", "CN=y")
OTHER_HOST = PeerCertificate("other.example.com", object(), "SUCCESS", 0, "CN=client1", "CN=ca")
NO_SNI = PeerCertificate(None)


def check(**kw) -> ClientCertCheck:
    c = ClientCertCheck("h.example.com", ClientCertPolicy(("demo", "ca"), **kw), "demo/i")
    c.auth = AUTH
    return c


@pytest.mark.parametrize("policy, peer, status, headers", [
    ({}, None, 0, ()),  # plain HTTP: not checked
    ({}, GOOD, 0, (("ssl-client-verify", "SUCCESS"), ("ssl-client-subject-dn", "CN=client1"),
                   ("ssl-client-issuer-dn", "CN=ca"))),
    ({"pass_certificate": True}, GOOD, 0, (
        ("ssl-client-verify", "SUCCESS"), ("ssl-client-subject-dn", "CN=client1"),
        ("ssl-client-issuer-dn", "CN=ca"), ("ssl-client-cert", "PEM%0A"))),
    ({}, NONE, 400, NO_CERTIFICATE),
    ({}, NO_PEER, 400, NO_CERTIFICATE),  # a connection whose handshake asked nothing
    ({}, NO_SNI, 400, NO_CERTIFICATE),
    ({}, UNKNOWN_CA, 400, BAD_CERTIFICATE),
    ({"error_page": "https://e/x"}, NONE, 302, "https://e/x"),
    ({"error_page": "https://e/x"}, UNKNOWN_CA, 302, "https://e/x"),
    ({"verify": "optional"}, NONE, 0, (("ssl-client-verify", "NONE"),)),
    ({"verify": "optional"}, UNKNOWN_CA, 400, BAD_CERTIFICATE),
    ({"verify": "optional_no_ca"}, UNKNOWN_CA, 0, (
        ("ssl-client-verify", "FAILED:unable to verify"), ("ssl-client-subject-dn", "CN=x"),
        ("ssl-client-issuer-dn", "CN=y"))),
    ({"verify": "optional_no_ca"}, EXPIRED, 400, BAD_CERTIFICATE),
    ({"verify": "off"}, NONE, 0, (("ssl-client-verify", "NONE"),)),
    ({}, OTHER_HOST, 421, MISDIRECTED),  # SNI named another host (nginx: 421)
    ({"verify": "off"}, OTHER_HOST, 0, (("ssl-client-verify", "NONE"),)),
    ({"match_cn": "CN=client1$"}, GOOD, 0, None),
    ({"match_cn": "CN=client2"}, GOOD, 403, "client certificate unauthorized"),
    ({"verify": "optional", "match_cn": "CN=client1"}, NONE, 403, "client certificate unauthorized"),
])
def test_admission(policy, peer, status, headers):
    got = check(**policy).admit(peer)
    assert got.status == status
    if status == 0 and headers is not None:
        assert got.headers == headers
    elif status == 302:
        assert got.location == headers
    elif status:
        assert got.text == headers


def test_unloaded_or_broken_settings_answer_503_over_https_only():
    c = check()
    c.auth = None  # the CA Secret could not be loaded
    assert c.admit(GOOD).status == 503 and c.admit(None).status == 0
    c.auth, c.broken = AUTH, "auth-tls-secret demo/ca: has no ca.crt"
    assert c.admit(GOOD).status == 503 and "has no ca.crt" in c.admit(GOOD).text


# -- host-wide: the oldest Ingress decides every path of its hosts ---------------------------


def test_oldest_ingress_decides_for_the_whole_host_and_aliases():
    def ing(name, path, ts, ann):
        obj = ingress(name, ["h.example.com"], annotations={NGINX + k: v for k, v in ann.items()})
        obj["spec"]["rules"][0]["http"]["paths"][0]["path"] = path
        obj["metadata"]["creationTimestamp"] = ts
        return obj

    ings = [ing("new", "/new", "2026-01-02T00:00:00Z", {"auth-tls-secret": "other"}),
            ing("old", "/old", "2026-01-01T00:00:00Z",
                {"auth-tls-secret": "ca", "server-alias": "alias.example.com"}),
            ing("none", "/none", "2026-01-03T00:00:00Z", {}),
            ingress("elsewhere", ["e.example.com"])]
    table, problems = build_route_table(ings, [], BuildOptions())
    for path in ("/new", "/old", "/none"):
        d = table.route(RequestView("GET", path, "h.example.com", {}))
        assert d.client_cert is not None and d.client_cert.policy.secret == ("demo", "ca"), path
    assert table.route(RequestView("GET", "/old", "alias.example.com", {})).client_cert is not None
    assert table.route(RequestView("GET", "/", "e.example.com", {})).client_cert is None
    assert [p.message for p in problems if "already takes" in p.message] == [
        "host h.example.com already takes the client-certificate settings of demo/old "
        "(the oldest Ingress wins); ignored"]
    # for the TLS side: the hosts that ask, and the others (not taken for a wildcard's)
    assert {h: c is not None for h, c in table.client_certs.items()} == {
        "h.example.com": True, "alias.example.com": True, "e.example.com": False}
    described = {r["path"]: r["clientCertificates"] for r in table.describe()}
    assert described["/none"]["secret"] == "demo/ca"


# -- through the gateway -------------------------------------------------------------------


def client_context(server_ca: CA, client: tuple[bytes, bytes] | None) -> ssl.SSLContext:
    ctx = server_ca.client_context()
    if client is not None:
        with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
            f.write(client[0] + client[1])
            f.flush()
            ctx.load_cert_chain(f.name)
    return ctx


async def get(port: int, sni: str, host: str, ctx: ssl.SSLContext,
              headers: dict | None = None) -> tuple[int, str | None, str, dict]:
    """One HTTPS request: (status, Location, body, the headers the pod saw)."""
    async with aiohttp.ClientSession() as s, s.get(
            f"https://127.0.0.1:{port}/p", headers={"Host": host, **(headers or {})}, ssl=ctx,
            server_hostname=sni, allow_redirects=False) as r:
        body = await r.text()
        seen = {k.lower(): v for k, v in json.loads(body)["headers"]} if r.status == 200 else {}
        return r.status, r.headers.get("Location"), body, seen


async def ca_names_asked(port: int, sni: str) -> list[str]:
    """The client CA names the server's certificate request lists (openssl s_client)."""
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 20))[0].decode(errors="replace")
    if "Acceptable client certificate CA names" not in out:
        return []
    block = out.split("Acceptable client certificate CA names", 1)[1].splitlines()[1:]
    return [line.strip() for line in block if line.startswith(("C", "O")) and "=" in line][:5]


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl")
@pytest.mark.skipif(isinstance(native(), str), reason="no OpenSSL binding on this Python")
async def test_client_certificates_through_the_gateway():
    server_ca, client_ca, stranger_ca = CA(), CA(), CA()
    client_ca_secret = {"metadata": {"name": "clients", "namespace": "demo"}, "type": "Opaque",
                        "data": {"ca.crt": b64(client_ca.pem)}}
    on = {NGINX + "auth-tls-secret": "demo/clients", NGINX + "auth-tls-match-cn": "CN=client1$",
          NGINX + "auth-tls-pass-certificate-to-upstream": "true"}
    m_tls = [{"hosts": ["m.example.com"], "secretName": "m-tls"}]
    app, hub, up = await started(
        [ingress("m", ["m.example.com"], m_tls, on),
         ingress("o", ["o.example.com"], None,  # no tls entry: the default certificate
                 {NGINX + "auth-tls-secret": "clients", NGINX + "auth-tls-verify-client": "optional"}),
         ingress("p", ["p.example.com"], [{"hosts": ["p.example.com"], "secretName": "p-tls"}],
                 {NGINX + "auth-tls-secret": "clients",
                  NGINX + "auth-tls-error-page": "https://errors.example.com/cert"}),
         ingress("x", ["x.example.com"], None, {NGINX + "auth-tls-secret": "missing"}),
         ingress("w", ["*.w.example.com"], None, {NGINX + "auth-tls-secret": "clients"}),
         ingress("wa", ["a.w.example.com"], None),
         ingress("plain", ["plain.example.com"],
                 [{"hosts": ["plain.example.com"], "secretName": "plain-tls"}])],
        [secret("m-tls", *server_ca.issue("m.example.com")), client_ca_secret,
         secret("p-tls", *server_ca.issue("p.example.com")),
         secret("plain-tls", *server_ca.issue("plain.example.com"))])
    try:
        port = app.proxy_tls.port
        client1 = client_context(server_ca, client_ca.issue("client1"))
        client2 = client_context(server_ca, client_ca.issue("client2"))
        stranger = client_context(server_ca, stranger_ca.issue("client1"))
        bare = client_context(server_ca, None)
        # verify on: the certificate, its subject, issuer and PEM reach the pod
        status, _, _, seen = await get(port, "m.example.com", "m.example.com", client1,
                                       {"ssl-client-verify": "forged"})
        assert status == 200
        assert seen["ssl-client-verify"] == "SUCCESS"
        assert seen["ssl-client-subject-dn"] == "CN=client1"
        assert seen["ssl-client-issuer-dn"] == "CN=amcs test CA"
        assert unquote(seen["ssl-client-cert"]).startswith("-----BEGIN CERTIFICATE-----\n")
        # no certificate, an unknown issuer, a CN the annotation does not match
        status, _, body, _ = await get(port, "m.example.com", "m.example.com", bare)
        assert (status, body.strip()) == (400, "No required SSL certificate was sent")
        status, _, body, _ = await get(port, "m.example.com", "m.example.com", stranger)
        assert (status, body.strip()) == (400, "The SSL certificate error")
        assert (await get(port, "m.example.com", "m.example.com", client2))[0] == 403
        # the error page instead of the 400
        status, location, _, _ = await get(port, "p.example.com", "p.example.com", bare)
        assert (status, location) == (302, "https://errors.example.com/cert")
        # optional: no certificate passes, and a forged verdict never reaches the pod
        insecure_bare = ssl.create_default_context()
        insecure_bare.check_hostname, insecure_bare.verify_mode = False, ssl.CERT_NONE
        status, _, _, seen = await get(port, "o.example.com", "o.example.com", insecure_bare,
                                       {"ssl-client-verify": "SUCCESS", "ssl-client-subject-dn": "CN=x"})
        assert status == 200 and seen["ssl-client-verify"] == "NONE"
        assert "ssl-client-subject-dn" not in seen
        # a connection made for another host cannot carry a request for this one (nginx: 421)
        status, _, body, _ = await get(port, "plain.example.com", "m.example.com", client1)
        assert (status, body.strip()) == (421, MISDIRECTED)
        # hosts without auth-tls ask for no certificate, and pass the header untouched
        status, _, _, seen = await get(port, "plain.example.com", "plain.example.com", client1,
                                       {"ssl-client-verify": "mine"})
        assert status == 200 and seen["ssl-client-verify"] == "mine"
        assert await ca_names_asked(port, "plain.example.com") == []
        assert any("amcs test CA" in n for n in await ca_names_asked(port, "m.example.com"))
        # a wildcard host asks; a host of its own under it does not
        assert any("amcs test CA" in n for n in await ca_names_asked(port, "b.w.example.com"))
        assert await ca_names_asked(port, "a.w.example.com") == []
        # plain HTTP is not checked (as nginx's port 80), and client-sent headers are dropped
        status, _, body = await http_get(f"http://127.0.0.1:{app.proxy.port}/p", "o.example.com",
                                         {"ssl-client-verify": "SUCCESS"})
        seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
        assert status == 200 and "ssl-client-verify" not in seen
        # a Secret that cannot be used: HTTPS requests answer 503, named in the problems
        status, _, body, _ = await get(port, "x.example.com", "x.example.com", insecure_bare)
        assert status == 503 and "demo/missing: not found" in body
        assert any("auth-tls-secret demo/missing: not found" in str(p) for p in app.problems)
        # the Secret appears: the host asks for certificates within a second
        await hub.create(SECRETS, {**client_ca_secret, "metadata": {"name": "missing", "namespace": "demo"}})
        for _ in range(50):
            if (await get(port, "x.example.com", "x.example.com", insecure_bare))[0] == 400:
                break
            await asyncio.sleep(0.05)
        assert (await get(port, "x.example.com", "x.example.com", insecure_bare))[0] == 400
        assert app.tls.describe()["clientCertificates"] == [
            "*.w.example.com", "m.example.com", "o.example.com", "p.example.com", "x.example.com"]
    finally:
        await stopped(app, up)


def _authority(name: str, signer: tuple | None = None) -> tuple:
    """(certificate, key, PEM) of a CA, self-signed or signed by `signer` (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(signer[0].subject if signer else subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer[1] if signer else key, hashes.SHA256()))
    return cert, key, cert.public_bytes(serialization.Encoding.PEM)


def _leaf(cn: str, signer: tuple) -> tuple[x509.Certificate, bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(signer[0].subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(signer[1], hashes.SHA256()))
    return (cert, cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.mark.skipif(isinstance(native(), str), reason="no OpenSSL binding on this Python")
async def test_revocation_list_and_verify_depth():
    root = _authority("client root")
    middle = _authority("client intermediate", root[:2])
    good, revoked = _leaf("good", root[:2]), _leaf("revoked", root[:2])
    lower = _authority("client intermediate 2", middle[:2])
    near, deep = _leaf("near", middle[:2]), _leaf("deep", lower[:2])  # one, two intermediates
    now = datetime.datetime.now(datetime.UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(root[0].subject)
           .last_update(now - datetime.timedelta(hours=1)).next_update(now + datetime.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(revoked[0].serial_number).revocation_date(now)
                                    .build())
           .sign(root[1], hashes.SHA256()))
    data = {"ca.crt": b64(root[2]), "ca.crl": b64(crl.public_bytes(serialization.Encoding.PEM))}
    cas = [{"metadata": {"name": "with-crl", "namespace": "demo"}, "type": "Opaque", "data": data},
           {"metadata": {"name": "root", "namespace": "demo"}, "type": "Opaque",
            "data": {"ca.crt": b64(root[2])}}]
    app, hub, up = await started(
        [ingress("r", ["r.example.com"], None, {NGINX + "auth-tls-secret": "with-crl"}),
         ingress("d1", ["d1.example.com"], None, {NGINX + "auth-tls-secret": "root"}),
         ingress("d2", ["d2.example.com"], None, {NGINX + "auth-tls-secret": "root",
                                                   NGINX + "auth-tls-verify-depth": "2"})], cas)
    try:
        port = app.proxy_tls.port

        def client(leaf: tuple, chain: bytes = b"") -> ssl.SSLContext:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
                f.write(leaf[1] + chain + leaf[2])
                f.flush()
                ctx.load_cert_chain(f.name)
            return ctx

        assert (await get(port, "r.example.com", "r.example.com", client(good)))[0] == 200
        status, _, body, _ = await get(port, "r.example.com", "r.example.com", client(revoked))
        assert (status, body.strip()) == (400, "The SSL certificate error")
        # the client sends its intermediates; the depth counts them (OpenSSL's verify depth):
        # 1, the default, allows one, 2 two
        chain = lower[2] + middle[2]
        assert (await get(port, "d1.example.com", "d1.example.com", client(good)))[0] == 200
        assert (await get(port, "d1.example.com", "d1.example.com", client(near, middle[2])))[0] == 200
        assert (await get(port, "d1.example.com", "d1.example.com", client(deep, chain)))[0] == 400
        assert (await get(port, "d2.example.com", "d2.example.com", client(deep, chain)))[0] == 200
    finally:
        await stopped(app, up)


def _https_over_session(port: int, host: str, ctx: ssl.SSLContext,
                        session: ssl.SSLSession | None) -> tuple[int, bool, ssl.SSLSession | None]:
    """A blocking GET (run in a thread) offering `session`: (status, resumed, the session)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host, session=session) as s:
        s.sendall(f"GET /p HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return int(data.split(b" ", 2)[1]), s.session_reused, s.session


@pytest.mark.skipif(isinstance(native(), str), reason="no OpenSSL binding on this Python")
async def test_sessions_of_client_certificate_hosts_never_resume():
    first, second = _authority("first client CA"), _authority("second client CA")
    client = _leaf("client", first[:2])
    ca_secret = {"metadata": {"name": "clients", "namespace": "demo"}, "type": "Opaque",
                 "data": {"ca.crt": b64(first[2])}}
    app, hub, up = await started(
        [ingress("m", ["m.example.com"], None, {NGINX + "auth-tls-secret": "clients"})], [ca_secret])
    try:
        port = app.proxy_tls.port
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
            f.write(client[1] + client[2])
            f.flush()
            ctx.load_cert_chain(f.name)
        status, _, session = await asyncio.to_thread(_https_over_session, port, "m.example.com", ctx, None)
        assert status == 200 and session is not None
        status, resumed, session = await asyncio.to_thread(
            _https_over_session, port, "m.example.com", ctx, session)
        assert (status, resumed) == (200, False)  # a full handshake, verified again
        # the host now trusts another CA: the old session (verified under the first) must not
        # resume, and the full handshake refuses the client's certificate
        await hub.replace(SECRETS, {**ca_secret, "data": {"ca.crt": b64(second[2])}})
        for _ in range(50):
            if any("second client CA" in n for n in await ca_names_asked(port, "m.example.com")):
                break
            await asyncio.sleep(0.05)
        status, resumed, _ = await asyncio.to_thread(_https_over_session, port, "m.example.com", ctx, session)
        assert (status, resumed) == (400, False)
    finally:
        await stopped(app, up)
