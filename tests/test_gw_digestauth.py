"""`auth-type: digest` (gateway/digest.py, gateway/credentials.py): the header parsing and
the nonce rules (table-driven, with RFC 7616's own example), and the check through the
gateway with real Digest clients (curl --digest, requests' HTTPDigestAuth)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil

import aiohttp
import pytest
import requests
from requests.auth import HTTPDigestAuth
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_basicauth import parsed
from test_gw_routing_kit import NGX

from gateway.credentials import parse_users
from gateway.digest import NONCE_TIMEOUT, NONCE_USES, DigestNonces, expected_response, parse_digest
from mcs_controller.access.resources import SECRETS

HOST = "digest.example.com"
REALM = "Staff only"


def ha1(user: str, realm: str, password: str) -> str:
    return hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()


def test_rfc_7616_example_response():
    """RFC 7616 section 3.9.1 (MD5): Mufasa, "Circle of Life"."""
    params = {"nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "uri": "/dir/index.html",
              "nc": "00000001", "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "qop": "auth"}
    assert expected_response(ha1("Mufasa", "http-auth@example.org", "Circle of Life"), "GET", params) \
        == "8ca523f5e9506fed4657c9700eebdbec"


@pytest.mark.parametrize("header, want", [
    ('Digest username="alice", realm="a \\"b\\"", nc=00000001, qop=auth',
     {"username": "alice", "realm": 'a "b"', "nc": "00000001", "qop": "auth"}),
    ('digest Username="x",URI="/a,b"', {"username": "x", "uri": "/a,b"}),
    ("Basic YWxpY2U6eA==", None),
    ('Digest username="unterminated', None),
])
def test_parse_digest(header, want):
    assert parse_digest(header) == want


def authorization(nonce: str, nc: int = 1, password: str = "secret", uri: str = "/x",
                  method: str = "GET", realm: str = REALM, qop: str = "auth") -> str:
    params = {"nonce": nonce, "uri": uri, "nc": f"{nc:08x}", "cnonce": "c0ffee", "qop": qop}
    response = expected_response(ha1("alice", realm, password), method, params)
    return (f'Digest username="alice", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", qop={qop}, nc={nc:08x}, cnonce="c0ffee", algorithm=MD5')


def test_nonce_rules():
    nonces = DigestNonces()
    table = {f"alice:{REALM}": ha1("alice", REALM, "secret")}
    now = 1_700_000_000.0
    nonce = nonces.issue(now)
    forged = nonce[:-1] + ("1" if nonce.endswith("0") else "0")  # not what we signed

    def check(header: str | None, method: str = "GET", uri: str = "/x", at: float = now + 1) -> int:
        return nonces.check(table, REALM, method, uri, header, at)

    assert check(None) == 401
    assert check(authorization(nonce, password="wrong")) == 401
    assert check(authorization(nonce, realm="Other")) == 401  # another realm's user
    assert check(authorization(nonce, qop="auth-int")) == 401
    assert check(authorization(nonce), uri="/y") == 400  # made for another request
    assert check(authorization(nonce), method="POST") == 401
    assert check(authorization(forged)) == 401  # a nonce we never issued
    assert check(authorization(nonce)) == 0
    assert check(authorization(nonce)) == 401  # the same nc again: a replay
    assert check(authorization(nonce, nc=3)) == 0  # counters may skip, never go back
    assert check(authorization(nonce, nc=2)) == 401
    assert check(authorization(nonce, nc=4), at=now + NONCE_TIMEOUT + 1) == 401  # too old
    fresh = nonces.issue(now + 0.5)
    for nc in range(1, NONCE_USES + 1):
        assert check(authorization(fresh, nc=nc)) == 0
    assert check(authorization(fresh, nc=NONCE_USES + 1)) == 401  # used up
    assert b'stale="true"' in nonces.challenge(REALM, authorization(fresh, nc=99))
    assert b"stale" not in nonces.challenge(REALM, authorization(forged))
    assert b'realm="Staff only"' in nonces.challenge(REALM)


def test_htdigest_users_and_settings():
    file = {"data": {"auth": base64.b64encode(
        f"alice:{REALM}:{ha1('alice', REALM, 'secret')}\nalice:Other:abc\nbroken\n".encode()).decode()}}
    assert parse_users(file, "auth-file", "digest") == {
        f"alice:{REALM}": ha1("alice", REALM, "secret"), "alice:Other": "abc"}
    amap = {"data": {"bob": base64.b64encode(f"{REALM}:0123".encode()).decode()}}
    assert parse_users(amap, "auth-map", "digest") == {f"bob:{REALM}": "0123"}
    auth, problems = parsed({NGX + "auth-type": "digest", NGX + "auth-secret": "users", NGX + "auth-realm": REALM})
    assert problems == [] and auth.kind == "digest" and auth.describe["type"] == "digest"


def digest_secret() -> dict:
    line = f"alice:{REALM}:{ha1('alice', REALM, 'secret')}\n"
    return {"metadata": {"name": "digest-users", "namespace": "demo"}, "type": "Opaque",
            "data": {"auth": base64.b64encode(line.encode()).decode()}}


async def test_real_digest_clients_through_the_gateway():
    ann = {NGX + "auth-type": "digest", NGX + "auth-secret": "digest-users", NGX + "auth-realm": REALM}
    async with gateway_over([app_ingress("digest", HOST, "web", ann)], "127.0.78.9") as (app, up):
        await app.hub.create(SECRETS, digest_secret())
        url = f"http://127.0.0.1:{app.proxy.port}/items?q=1"
        async with aiohttp.ClientSession() as s, s.get(url, headers={"Host": HOST}) as r:
            assert r.status == 401
            challenge = r.headers["WWW-Authenticate"]
            assert challenge.startswith('Digest algorithm="MD5", qop="auth", realm="Staff only", nonce="')

        def with_requests(password: str) -> tuple[int, int]:
            with requests.Session() as session:  # asks, is challenged, answers: two requests
                session.auth = HTTPDigestAuth("alice", password)
                first = session.get(url, headers={"Host": HOST}, timeout=5).status_code
                return first, session.get(url, headers={"Host": HOST}, timeout=5).status_code

        assert await asyncio.to_thread(with_requests, "secret") == (200, 200)
        assert await asyncio.to_thread(with_requests, "wrong") == (401, 401)
        proxied = up.requests[-1]
        assert proxied.header("authorization") is None  # not passed upstream, as ingress-nginx
        assert proxied.path == "/items?q=1"
        if shutil.which("curl"):
            proc = await asyncio.create_subprocess_exec(
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--digest", "-u", "alice:secret",
                "-H", f"Host: {HOST}", url, stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            assert out == b"200"


def test_a_non_ascii_response_is_refused_not_an_error():
    nonces = DigestNonces()
    table = {f"alice:{REALM}": ha1("alice", REALM, "secret")}
    header = authorization(nonces.issue()).replace('response="', 'response="é')
    assert nonces.check(table, REALM, "GET", "/x", header) == 401
    forged = authorization("5f3aé" + "0" * 31)  # a right response to a nonce that is not ours
    assert nonces.check(table, REALM, "GET", "/x", forged) == 401
    assert b"stale" not in nonces.challenge(REALM, forged)
