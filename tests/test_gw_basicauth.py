"""auth-type basic (gateway/routing/basicauth.py, gateway/credentials.py): the annotations
(table-driven), the hash formats against hashes made by real tools (openssl, crypt(3)), and
the check through the gateway with a real HTTP client and a Secret in the hub."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import subprocess

import aiohttp
import pytest
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import NGX, assert_denied, decide, one, problems_for

from gateway.credentials import CredentialStore, _crypt, parse_users, verify
from gateway.routing.basicauth import BasicAuth, parse_basic_auth
from gateway.routing.values import Annotations
from mcs_controller.access.resources import SECRETS

HOST = "private.example.com"
OPENSSL = shutil.which("openssl")


def parsed(ann: dict):
    problems: list = []
    return parse_basic_auth(Annotations("demo/x", ann, problems), "demo"), [p.message for p in problems]


def openssl_passwd(*args: str) -> str:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, "passwd", *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl")
@pytest.mark.parametrize("flag", ["-apr1", "-1", "-5", "-6"])
def test_hashes_made_by_openssl(flag):
    if flag != "-apr1" and _crypt is None:
        pytest.skip("no crypt(3) in this Python")
    hashed = openssl_passwd(flag, "-salt", "s4ltS4lt", "hunter2")
    assert verify("hunter2", hashed)
    assert not verify("hunter3", hashed)


def test_sha_ssha_plain_and_bcrypt():
    sha = "{SHA}" + base64.b64encode(hashlib.sha1(b"hunter2").digest()).decode()
    ssha = "{SSHA}" + base64.b64encode(hashlib.sha1(b"hunter2" + b"salt").digest() + b"salt").decode()
    for hashed in (sha, ssha, "{PLAIN}hunter2"):
        assert verify("hunter2", hashed) and not verify("hunter", hashed)
    assert not verify("hunter2", "{SSHA}not base64!") and not verify("x", "garbage")
    if _crypt is not None and "2b" in {m.ident for m in _crypt.methods if m.ident}:
        bcrypt = _crypt.crypt("hunter2", _crypt.mksalt(_crypt.METHOD_BLOWFISH, rounds=1 << 4))
        assert verify("hunter2", bcrypt) and not verify("hunter3", bcrypt)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_users_from_an_htpasswd_file_or_a_map():
    file = {"data": {"auth": b64("# admins\nalice:{PLAIN}a\n\nbob:{PLAIN}b\nbroken line\n")}}
    assert parse_users(file, "auth-file") == {"alice": "{PLAIN}a", "bob": "{PLAIN}b"}
    assert parse_users({"data": {"alice": b64("{PLAIN}a")}}, "auth-map") == {"alice": "{PLAIN}a"}
    assert parse_users({"data": {"users": b64("x")}}, "auth-file") == "has no auth key"
    assert parse_users({"data": {"auth": "%%%"}}, "auth-file") == "has data that is not base64 UTF-8"
    assert parse_users({"data": {"auth": b64("# nobody\n")}}, "auth-file") == "lists no user"


@pytest.mark.parametrize("ann, problem", [
    ({NGX + "auth-type": "basic"}, "auth-secret is missing"),
    ({NGX + "auth-type": "ldap", NGX + "auth-secret": "s"}, "'ldap' is not an authentication type"),
    ({NGX + "auth-type": "basic", NGX + "auth-secret": "Not_A_Name"}, "is not a Secret name"),
    ({NGX + "auth-type": "basic", NGX + "auth-secret": "s", NGX + "auth-secret-type": "ldap"},
     "'ldap' is not auth-file or auth-map"),
])
def test_an_unusable_setting_denies_the_route(ann, problem):
    assert_denied(*parsed(ann), problem)


def test_settings_and_routes_page():
    auth, problems = parsed({NGX + "auth-type": "basic", NGX + "auth-secret": "other/users",
                             NGX + "auth-secret-type": "auth-map", NGX + "auth-realm": 'Say "please"'})
    assert problems == [] and auth.secret == ("other", "users") and auth.secret_type == "auth-map"
    assert auth.challenge == b'WWW-Authenticate: Basic realm="Say \\"please\\""\r\n'
    auth, _ = parsed({NGX + "auth-type": "basic", NGX + "auth-secret": "users"})
    assert auth.secret == ("demo", "users") and auth.secret_type == "auth-file" and auth.realm == ""
    assert parsed({NGX + "auth-realm": "x"}) == (None, ["needs auth-type; ignored"])
    table, problems, _ = one({NGX + "auth-type": "basic", NGX + "auth-secret": "users"})
    assert problems_for(problems, "default/ing") == []
    assert decide(table).basic_auth.secret == ("default", "users")
    assert table.describe()[0]["basicAuth"]["secret"] == "default/users"


def basic(user: str, password: str) -> str:
    return "Basic " + b64(f"{user}:{password}")


def htpasswd_secret(name: str, lines: str) -> dict:
    return {"metadata": {"name": name, "namespace": "demo"}, "type": "Opaque",
            "data": {"auth": b64(lines)}}


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl")
async def test_through_the_gateway():
    ann = {NGX + "auth-type": "basic", NGX + "auth-secret": "users", NGX + "auth-realm": "Staff"}
    ings = [app_ingress("private", HOST, "web", ann),
            app_ingress("nosecret", "nosecret.example.com", "web",
                        {NGX + "auth-type": "basic", NGX + "auth-secret": "missing"})]
    async with gateway_over(ings, "127.0.78.1") as (app, up), aiohttp.ClientSession() as s:
        await app.hub.create(SECRETS, htpasswd_secret(
            "users", f"alice:{openssl_passwd('-apr1', 'hunter2')}\n"))
        url = f"http://127.0.0.1:{app.proxy.port}/x"

        async def get(host: str, auth: str | None = None) -> tuple[int, str | None]:
            headers = {"Host": host, **({"Authorization": auth} if auth else {})}
            async with s.get(url, headers=headers) as r:
                return r.status, r.headers.get("WWW-Authenticate")

        assert await get(HOST) == (401, 'Basic realm="Staff"')
        assert await get(HOST, basic("alice", "wrong")) == (401, 'Basic realm="Staff"')
        assert await get(HOST, basic("mallory", "hunter2")) == (401, 'Basic realm="Staff"')
        assert up.requests == []
        assert (await get(HOST, basic("alice", "hunter2")))[0] == 200
        assert up.requests[-1].header("authorization") is None  # not passed upstream
        assert (await get("nosecret.example.com", basic("alice", "hunter2")))[0] == 503

        # a changed Secret applies to the next request
        await app.hub.replace(SECRETS, htpasswd_secret("users", "alice:{PLAIN}newpass\n"))
        for _ in range(50):
            if (await get(HOST, basic("alice", "newpass")))[0] == 200:
                break
            await asyncio.sleep(0.02)
        assert (await get(HOST, basic("alice", "newpass")))[0] == 200
        assert (await get(HOST, basic("alice", "hunter2")))[0] == 401


def test_a_check_that_fails_refuses_the_request():
    def broken_lookup(namespace: str, name: str) -> dict:
        raise RuntimeError("secret store exploded")

    store = CredentialStore(broken_lookup)
    auth = BasicAuth(("demo", "users"), "basic")
    assert store.check(auth, "Basic " + b64("alice:secret")) == 500  # never let through
