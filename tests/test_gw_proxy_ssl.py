"""proxy-ssl-* (TLS to the pods as the Ingress says: gateway/routing/proxyssl.py,
gateway/upstream_tls.py): parsing (table-driven), then real requests through the gateway to
an aiohttp pod that serves TLS with its own certificate, asks for a client certificate and
records the SNI name and the client certificate of each connection."""

from __future__ import annotations

import asyncio
import base64
import ssl

import aiohttp
import pytest
from aiohttp import web
from test_gw_app import gateway_over
from test_gw_app import ingress as app_ingress
from test_gw_backend_tls import serve_tls, tls_service
from test_gw_routing_kit import NGX, OURS, build, decide, one, simple
from test_gw_tls import CA

from gateway.types import UpstreamTLS
from gateway.upstream_tls import UpstreamTLSStore
from mcs_controller.access.resources import SECRETS

HTTPS = {NGX + "backend-protocol": "HTTPS"}
POD_IP = "127.0.83.1"


def ssl_ann(**kw: str) -> dict:
    return {**HTTPS, **{NGX + "proxy-ssl-" + k.replace("_", "-"): v for k, v in kw.items()}}


@pytest.mark.parametrize("ann, expect, messages", [
    (ssl_ann(secret="ca"), dict(secret=("default", "ca"), verify=False, sni=False,
                                server_name="main.default.svc", min_version="TLSv1",
                                max_version="TLSv1_2", ciphers="DEFAULT", broken=None), []),
    (ssl_ann(secret="default/ca", verify="on", server_name="on", name="Pod.Example.COM",
             protocols="TLSv1.3 TLSv1.2", ciphers="ECDHE-ECDSA-AES128-GCM-SHA256:!aNULL"),
     dict(verify=True, sni=True, server_name="pod.example.com", min_version="TLSv1_2",
          max_version="TLSv1_3", ciphers="ECDHE-ECDSA-AES128-GCM-SHA256:!aNULL"), []),
    (ssl_ann(secret="other/ca"), dict(broken="proxy-ssl-secret is in another namespace"),
     ["a Secret in another namespace is not allowed (ingress-nginx: cross namespace secrets are "
      "not supported); the routes answer 503"]),
    (ssl_ann(secret="Bad_Name"), dict(broken="proxy-ssl-secret is not a Secret name"),
     ["'Bad_Name' is not a Secret name (name or namespace/name); the routes of this Ingress "
      "answer 503"]),
    (ssl_ann(secret="ca", verify="yes", server_name="true"), dict(verify=False, sni=False),
     ["'yes' is not on or off; off", "'true' is not on or off; off"]),
    (ssl_ann(secret="ca", name="*.example.com"), dict(server_name="main.default.svc"),
     ["'*.example.com': a wildcard is not a server name; the Service's name is used"]),
    (ssl_ann(secret="ca", protocols="SSLv2 TLSv1.2"), dict(min_version="TLSv1_2", max_version="TLSv1_2"),
     ["SSLv2: not a protocol this gateway can use (TLSv1, TLSv1.1, TLSv1.2, TLSv1.3); left out"]),
    (ssl_ann(secret="ca", ciphers="HIGH; rm -rf"), dict(ciphers="DEFAULT"),
     ["'HIGH; rm -rf' is not an OpenSSL cipher list; DEFAULT"]),
    (ssl_ann(secret="ca", verify="on", verify_depth="2"), dict(verify=True),
     ["the chain's depth is not limited (Python's ssl cannot): a chain of any length to ca.crt "
      "is accepted"]),
])
def test_proxy_ssl_annotations(ann, expect, messages):
    table, _, msgs = one(ann)
    profile = decide(table).tls_profile
    assert {k: getattr(profile, k) for k in expect} == expect
    assert msgs == messages
    assert table.describe()[0]["proxySsl"]["secret"] == "/".join(profile.secret)


def test_a_canary_checks_its_own_services_name():
    main = simple("main", svc="main", age=1, ann=ssl_ann(secret="ca", verify="on"))
    can = simple("can", svc="canary", age=2, ann={NGX + "canary": "true", NGX + "canary-weight": "100"})
    table, problems = build(main, can)
    assert problems == []
    assert decide(table).backend.service == "canary"
    assert decide(table).tls_profile.server_name == "canary.default.svc"
    named = simple("main", svc="main", age=1,
                   ann=ssl_ann(secret="ca", verify="on", name="pods.internal"))
    table, _ = build(named, can)
    assert decide(table).tls_profile.server_name == "pods.internal"  # as the Ingress says


def test_nothing_applies_without_the_secret_or_https():
    table, _, msgs = one(ssl_ann(verify="on", name="pod.example.com"))
    assert decide(table).tls_profile is None
    assert msgs == ["needs proxy-ssl-secret; ignored"] * 2
    table, _, msgs = one({NGX + "proxy-ssl-secret": "ca"})
    assert decide(table).tls_profile is None and decide(table).upstream_tls is False
    assert msgs == ["has no effect without backend-protocol: HTTPS"]


def opaque(name: str, **files: bytes) -> dict:
    return {"metadata": {"name": name, "namespace": "demo"}, "type": "Opaque",
            "data": {k.replace("_", "."): base64.b64encode(v).decode() for k, v in files.items()}}


async def mtls_pod(pod_ca: CA, client_ca: CA, name: str):
    """A pod serving TLS as `name` (signed by `pod_ca`) that asks for a client certificate
    signed by `client_ca`; per request it records (SNI name, client certificate CN), and
    health probes and mirror copies apart, by path."""
    seen: list[tuple[str | None, str | None]] = []
    by_path: dict[str, list[tuple[str | None, str | None, str]]] = {}
    snis: dict[int, str | None] = {}  # by the connection's SSLObject

    async def handle(request: web.Request) -> web.Response:
        cert = request.transport.get_extra_info("peercert")
        cn = dict(x[0] for x in cert["subject"])["commonName"] if cert else None
        sni = snis.get(id(request.transport.get_extra_info("ssl_object")))
        if request.path in ("/healthz", "/m"):
            by_path.setdefault(request.path, []).append((sni, cn, request.host))
            return web.Response(text="ok")
        seen.append((sni, cn))
        return web.Response(text=f"mtls pod {request.path}")

    ctx = pod_ca.server_context(name)
    ctx.load_verify_locations(cadata=client_ca.pem.decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL  # a connection without one is served, and recorded so
    ctx.sni_callback = lambda obj, server_name, _ctx: snis.__setitem__(id(obj), server_name)
    runner, port = await serve_tls(handle, POD_IP, ctx)
    return runner, port, seen, by_path


async def test_pods_are_verified_and_get_the_client_certificate_from_the_secret():
    pod_ca, client_ca, stranger = CA(), CA(), CA()
    runner, port, seen, by_path = await mtls_pod(pod_ca, client_ca, "tlsweb.demo.svc")
    client_crt, client_key = client_ca.issue("gateway-client")
    ings = [
        app_ingress("verified", "verified.example.com", "tlsweb",
                    {**ssl_ann(secret="pod-ca", verify="on"), OURS + "health-check-path": "/healthz",
                     OURS + "health-check-interval": "0.2", OURS + "mirror-cluster": "east"}),
        app_ingress("wrong-name", "wrong-name.example.com", "tlsweb",
                    ssl_ann(secret="pod-ca", verify="on", name="other.example.com")),
        app_ingress("wrong-ca", "wrong-ca.example.com", "tlsweb",
                    ssl_ann(secret="stranger-ca", verify="on")),
        app_ingress("sni", "sni.example.com", "tlsweb",
                    ssl_ann(secret="stranger-ca", server_name="on", name="asked.example.com")),
        app_ingress("plain", "plain.example.com", "tlsweb", HTTPS),
        app_ingress("missing", "missing.example.com", "tlsweb", ssl_ann(secret="later")),
    ]
    try:
        async with gateway_over(ings, "127.0.83.9") as (app, _), aiohttp.ClientSession() as s:
            await app.hub.create(SECRETS, opaque("pod-ca", ca_crt=pod_ca.pem, tls_crt=client_crt,
                                                 tls_key=client_key))
            await app.hub.create(SECRETS, opaque("stranger-ca", ca_crt=stranger.pem))
            await tls_service(app, port, POD_IP)
            url = f"http://127.0.0.1:{app.proxy.port}/x"

            async def get(host: str, path: str = "/x") -> tuple[int, str]:
                async with s.get(url.replace("/x", path), headers={"Host": host}) as r:
                    return r.status, await r.text()

            for _ in range(100):  # the endpoints and the Secrets reach the gateway
                if (await get("verified.example.com"))[0] == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the pod was never reached")
            # verified as tlsweb.demo.svc (sent as SNI: Python checks the name it sends),
            # with the Secret's client certificate
            assert seen[-1] == ("tlsweb.demo.svc", "gateway-client")
            status, body = await get("wrong-name.example.com")  # not the pod's name
            assert status == 502 and body.startswith("upstream certificate not accepted")
            assert (await get("wrong-ca.example.com"))[0] == 502  # another CA signed it
            for _ in range(6):  # a route's settings, not the pod's health: no outlier count
                assert (await get("wrong-name.example.com"))[0] == 502
            outlier = app.upstream.outlier
            assert all(outlier.consecutive(ep) == (0, 0) for ep in outlier._states if ep.ip == POD_IP)
            # not verified, SNI as proxy-ssl-name; a Secret without tls.crt: no client cert
            assert await get("sni.example.com") == (200, "mtls pod /x")
            assert seen[-1] == ("asked.example.com", None)
            # backend-protocol HTTPS alone: ingress-nginx's defaults, no SNI, no certificate
            assert (await get("plain.example.com"))[0] == 200
            assert seen[-1] == (None, None)
            status, body = await get("missing.example.com")  # no such Secret (yet): denied
            assert status == 503 and "proxy-ssl" in body
            await app.hub.create(SECRETS, opaque("later", ca_crt=pod_ca.pem))
            for _ in range(100):  # read when requests come, no rebuild needed
                if (await get("missing.example.com"))[0] == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the Secret's arrival was not noticed")
            # health probes and same-Service mirror copies connect as the route's requests do
            assert (await get("verified.example.com", "/m"))[0] == 200
            for _ in range(100):
                if len(by_path.get("/m", [])) == 2 and by_path.get("/healthz"):
                    break
                await asyncio.sleep(0.05)
            hosts = sorted(host for _, _, host in by_path["/m"])
            assert hosts == ["verified.example.com", "verified.example.com-shadow"]
            for sni, cn, _ in by_path["/m"] + by_path["/healthz"]:
                assert (sni, cn) == ("tlsweb.demo.svc", "gateway-client")
    finally:
        await runner.cleanup()


def test_the_store_follows_each_secret_object_it_is_handed():
    """Profiles asked for in turn keep their contexts; a changed Secret (a new object, as the
    informer hands out on every change) is read again; a Secret that lost its CA or is gone
    is the routes' problem."""
    ca1, ca2 = CA(), CA()
    secrets = {("demo", "pod-ca"): opaque("pod-ca", ca_crt=ca1.pem)}
    store = UpstreamTLSStore(lambda ns, name: secrets.get((ns, name)))
    verified = UpstreamTLS(("demo", "pod-ca"), verify=True, server_name="web.demo.svc")
    plain = UpstreamTLS(("demo", "pod-ca"))  # another route's profile, the same Secret

    def trusts(ctx: ssl.SSLContext) -> set[int]:  # (OpenSSL pads the hex serial to whole bytes)
        return {int(c["serialNumber"], 16) for c in ctx.get_ca_certs()}

    first, name = store.context(verified)
    assert name == "web.demo.svc" and trusts(first) == {ca1.cert.serial_number}
    other, other_name = store.context(plain)
    assert other is not first and other_name == ""
    for _ in range(3):  # in turn: each keeps its context
        assert store.context(verified)[0] is first and store.context(plain)[0] is other
    assert store.problem(verified) is None
    secrets[("demo", "pod-ca")] = opaque("pod-ca", ca_crt=ca2.pem)  # rotated
    rotated = store.context(verified)[0]
    assert rotated is not first and trusts(rotated) == {ca2.cert.serial_number}
    secrets[("demo", "pod-ca")] = opaque("pod-ca", tls_crt=b"no CA")
    assert store.problem(verified) == "has no ca.crt" == store.problem(plain)
    del secrets[("demo", "pod-ca")]
    assert store.problem(verified) == "not found"
    secrets[("demo", "pod-ca")] = opaque("pod-ca", ca_crt=ca2.pem)  # back, as rotated
    assert store.problem(verified) is None
    assert trusts(store.context(verified)[0]) == {ca2.cert.serial_number}
