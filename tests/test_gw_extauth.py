"""auth-url and its companions (gateway/routing/extauth.py, gateway/proxy/extauth.py): the
parsing (table-driven), and the check through the gateway with a real auth service and
real HTTP clients."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import aiohttp
import pytest
import yaml
from aiohttp import web
from gwkit import Upstream
from netkit import silent_listener
from test_gw_app import gateway_over, world
from test_gw_app import ingress as app_ingress
from test_gw_routing_kit import MSE, NGX, assert_denied, decide, one, problems_for

from gateway.app import GatewayApp, trim_configmap
from gateway.routing.extauth import (
    MAX_HEADER_MAP,
    cache_ttl,
    cache_validity,
    parse_external_auth,
    signin_url,
)
from gateway.routing.values import Annotations
from mcs_controller.access.errors import Forbidden
from mcs_controller.access.kube import KubeCluster, load_kubeconfig
from mcs_controller.access.resources import CONFIG_MAPS, INGRESSES
from mcs_controller.access.served import serve_cluster

HOST = "api.example.com"


def parsed(ann: dict):
    problems: list = []
    return parse_external_auth(Annotations("demo/x", ann, problems)), [p.message for p in problems]


@pytest.mark.parametrize("signin, param, want", [
    ("https://login.example.com/start", "rd",
     "https://login.example.com/start?rd=$pass_access_scheme://$http_host$escaped_request_uri"),
    ("https://login.example.com/start?x=1", "rd",
     "https://login.example.com/start?x=1&rd=$pass_access_scheme://$http_host$escaped_request_uri"),
    ("https://login.example.com/start?rd=/home", "rd", "https://login.example.com/start?rd=/home"),
    ("https://login.example.com/start", "back",
     "https://login.example.com/start?back=$pass_access_scheme://$http_host$escaped_request_uri"),
])
def test_signin_url_adds_the_redirect_parameter_as_ingress_nginx(signin, param, want):
    assert signin_url(signin, param) == want


@pytest.mark.parametrize("text, want", [
    ("200 202 401 5m", (frozenset({200, 202, 401}), 300.0)),
    ("5m", (frozenset({200, 301, 302}), 300.0)),
    ("any 30s", (None, 30.0)),
    ("200 1h 30m", (frozenset({200}), 5400.0)),
    ("500ms", (frozenset({200, 301, 302}), 0.5)),
    ("5m 200", None),
    ("200 soon", None),
    ("200", None),
])
def test_cache_durations_read_as_proxy_cache_valid(text, want):
    assert cache_validity(text) == want


def test_cache_settings():
    auth, problems = parsed({NGX + "auth-url": "http://a/", NGX + "auth-cache-key": "$http_authorization"})
    assert problems == [] and auth.cache_key == "$http_authorization"
    assert auth.cache_valid == ((frozenset({200, 202, 401}), 300.0),)  # ingress-nginx's default
    assert cache_ttl(auth, 401) == 300.0 and cache_ttl(auth, 403) == 0.0
    auth, _ = parsed({NGX + "auth-url": "http://a/", NGX + "auth-cache-key": "$remote_user",
                      NGX + "auth-cache-duration": "200 1m, 401 10s"})
    assert auth.cache_valid == ((frozenset({200}), 60.0), (frozenset({401}), 10.0))
    assert_denied(*parsed({NGX + "auth-url": "http://a/", NGX + "auth-cache-duration": "200 1m, later"}),
                  "invalid cache duration(s) later")  # checked even without a key, as ingress-nginx


@pytest.mark.parametrize("ann, problem", [
    ({NGX + "auth-url": "auth.local/check"}, "is not an http(s) URL"),
    ({NGX + "auth-url": "ftp://auth.local/check"}, "is not an http(s) URL"),
    ({NGX + "auth-url": "http://$upstream_addr.local/"}, "$upstream_addr not supported"),
    ({NGX + "auth-url": "http://auth.local/", NGX + "auth-method": "FETCH"}, "not an HTTP method"),
    ({NGX + "auth-url": "http://auth.local/", NGX + "auth-response-headers": "X-User, Bad Name"},
     "invalid header name(s) Bad Name"),
    ({NGX + "auth-url": "http://auth.local/", NGX + "auth-signin": "https://l/?u=$request_id"},
     "$request_id not supported"),
    ({NGX + "auth-url": "http://auth.local/", NGX + "auth-cache-key": "$request_time"},
     "$request_time not supported"),
])
def test_an_unusable_check_denies_the_route(ann, problem):
    assert_denied(*parsed(ann), problem)


def test_settings_parse_under_both_prefixes_and_show_on_the_routes_page():
    auth, problems = parsed({MSE + "auth-url": "http://auth.local/check", NGX + "auth-method": "POST",
                             NGX + "auth-response-headers": "X-User, X-Email",
                             NGX + "auth-signin": "https://login.example.com/",
                             NGX + "auth-request-redirect": "https://app.example.com/"})
    assert problems == [] and auth is not None and auth.broken is None
    assert (auth.url, auth.method, auth.response_headers) == ("http://auth.local/check", "POST", ("X-User", "X-Email"))
    assert auth.request_redirect == "https://app.example.com/"
    table, _, msgs = one({NGX + "auth-url": "http://auth.local/check"})
    assert msgs == [] and decide(table).auth.url == "http://auth.local/check"
    assert table.describe()[0]["externalAuth"]["url"] == "http://auth.local/check"
    _, problems, _ = one({NGX + "auth-url": "http://auth.local/", NGX + "auth-snippet": "x"})
    assert problems_for(problems, "default/ing", "auth-snippet") == ["not supported by this gateway; ignored"]


class AuthService:
    """A real auth service: the Authorization header decides; every check is recorded."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.path_qs, dict(request.headers), body))
        token = request.headers.get("Authorization", "")
        if token == "Bearer good":
            return web.Response(text="ok", headers={"X-User": "alice", "Set-Cookie": "session=1; Path=/"})
        if token == "Bearer forbidden":
            return web.Response(status=403, text="no")
        if token == "Bearer broken":
            return web.Response(status=502, text="down")
        if token.startswith("Bearer plain"):
            return web.Response(text="ok", headers={"X-User": token[13:]})
        if token == "Bearer nostore":
            return web.Response(text="ok", headers={"Cache-Control": "no-store"})
        return web.Response(status=401, text="who?", headers={
            "WWW-Authenticate": 'Bearer realm="api"', "Set-Cookie": "tried=1"})


@asynccontextmanager
async def auth_service():
    svc = AuthService()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", svc.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield svc, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_check_lets_through_denies_and_passes_headers():
    async with auth_service() as (svc, base):
        ing = app_ingress("api", HOST, "web", {
            NGX + "auth-url": f"{base}/verify?from=gw", NGX + "auth-response-headers": "X-User, X-Team"})
        async with gateway_over([ing], "127.0.77.1") as (app, up), aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{app.proxy.port}"
            headers = {"Host": HOST, "Authorization": "Bearer good", "X-User": "mallory",
                       "X-Team": "spoofed"}
            async with s.post(f"{url}/items?q=1", headers=headers, data=b"payload") as r:
                assert r.status == 200
                assert r.headers.getall("Set-Cookie") == ["session=1; Path=/"]
            method, path, seen, body = svc.seen[-1]
            assert (method, path, body) == ("GET", "/verify?from=gw", b"")  # no body, nginx's GET
            assert seen["X-Original-URL"] == f"http://{HOST}/items?q=1"
            assert seen["X-Original-Method"] == "POST"
            assert seen["X-Auth-Request-Redirect"] == "/items?q=1"
            assert seen["X-Sent-From"] == "nginx-ingress-controller"
            assert seen["X-Real-IP"] == seen["X-Forwarded-For"] == "127.0.0.1"
            assert seen["Host"] == "127.0.0.1" and seen["Authorization"] == "Bearer good"
            assert "X-Original-URI" not in seen and "Content-Length" not in seen
            assert seen["X-Request-ID"] == up.requests[-1].header("x-request-id")
            proxied = up.requests[-1]
            assert proxied.method == "POST" and proxied.body == b"payload"
            assert proxied.header("x-user") == "alice"  # from the auth answer, not the client
            assert proxied.header("x-team") is None  # listed, absent from the answer: removed

            n = len(up.requests)
            async with s.get(f"{url}/items", headers={"Host": HOST}) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="api"'
                assert "Set-Cookie" not in r.headers
            async with s.get(f"{url}/items", headers={"Host": HOST, "Authorization": "Bearer forbidden"}) as r:
                assert r.status == 403
            async with s.get(f"{url}/items", headers={"Host": HOST, "Authorization": "Bearer broken"}) as r:
                assert r.status == 500  # any other answer is an error, as nginx's auth_request
            async with s.post(f"{url}/up", headers={"Host": HOST}, data=b"x" * 100_000) as r:
                assert r.status == 401  # a body the check refused is never proxied
            assert len(up.requests) == n


async def test_signin_redirect_method_and_an_unreachable_service():
    async with auth_service() as (svc, base):
        signin = {NGX + "auth-url": f"{base}/verify", NGX + "auth-method": "POST",
                  NGX + "auth-signin": "https://login.example.com/start"}
        down = {NGX + "auth-url": "http://127.0.0.1:9/verify"}  # discard port: refused
        ings = [app_ingress("api", HOST, "web", signin), app_ingress("down", "down.example.com", "web", down),
                app_ingress("bad", "bad.example.com", "web", {NGX + "auth-url": "not a url"})]
        async with gateway_over(ings, "127.0.77.2") as (app, up), aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{app.proxy.port}"
            async with s.get(f"{url}/a/b?x=1", headers={"Host": HOST}, allow_redirects=False) as r:
                assert r.status == 302
                assert r.headers["Location"] == f"https://login.example.com/start?rd=http://{HOST}%2Fa%2Fb%3Fx%3D1"
                assert r.headers.getall("Set-Cookie") == ["tried=1"]
            method, _, seen, _ = svc.seen[-1]
            assert method == "POST" and seen["X-Original-URI"] == "/a/b?x=1" and seen["X-Scheme"] == "http"
            async with s.get(f"{url}/a", headers={"Host": HOST, "Authorization": "Bearer good"}) as r:
                assert r.status == 200
            async with s.get(f"{url}/a", headers={"Host": "down.example.com"}) as r:
                assert r.status == 500 and "auth service unavailable" in await r.text()
            async with s.get(f"{url}/a", headers={"Host": "bad.example.com"}) as r:
                assert r.status == 503  # denied, never proxied unchecked
            assert len(up.requests) == 1


async def test_an_auth_service_that_never_answers_is_a_500_with_a_reason_in_the_log(caplog):
    with silent_listener() as port:  # connects to it hang
        hung = {NGX + "auth-url": f"http://127.0.0.1:{port}/verify", MSE + "timeout": "1"}  # the whole check
        async with gateway_over([app_ingress("hung", HOST, "web", hung)], "127.0.77.31") as (app, up), \
                aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{app.proxy.port}/a", headers={"Host": HOST}) as r:
                assert r.status == 500 and "auth service unavailable" in await r.text()
            assert up.requests == []
    line = next(m for m in caplog.messages if m.startswith("auth service "))
    assert line.split(" failed: ", 1)[1].strip(), line  # a reason, not an empty one


async def test_a_client_leaving_during_the_check_abandons_it():
    """The check's request is cancelled with the exchange: the auth service sees its
    connection closed, and nothing is proxied."""
    got_request = asyncio.Event()
    closed = asyncio.Event()

    async def never_answers(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        got_request.set()
        await r.read()  # EOF: the gateway gave up on this check
        closed.set()
        w.close()

    server = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ing = app_ingress("api", HOST, "web", {NGX + "auth-url": f"http://127.0.0.1:{port}/verify"})
        async with gateway_over([ing], "127.0.77.3") as (app, up):
            r, w = await asyncio.open_connection("127.0.0.1", app.proxy.port)
            w.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            await asyncio.wait_for(got_request.wait(), 5)
            w.close()
            await asyncio.wait_for(closed.wait(), 5)
            assert up.requests == []
    finally:
        server.close()
        await server.wait_closed()


async def test_answers_are_cached_per_key_as_nginx_caches_them():
    async with auth_service() as (svc, base):
        ing = app_ingress("api", HOST, "web", {
            NGX + "auth-url": f"{base}/verify", NGX + "auth-cache-key": "$http_authorization",
            NGX + "auth-response-headers": "X-User"})
        async with gateway_over([ing], "127.0.77.4") as (app, up), aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{app.proxy.port}"

            async def status(token: str | None) -> int:
                headers = {"Host": HOST, **({"Authorization": token} if token else {})}
                async with s.get(f"{url}/x", headers=headers) as r:
                    return r.status

            assert [await status("Bearer plain bob") for _ in range(3)] == [200] * 3
            assert len(svc.seen) == 1  # one check, then the cached answer
            assert [q.header("x-user") for q in up.requests] == ["bob"] * 3  # its headers too
            assert await status("Bearer plain eve") == 200 and len(svc.seen) == 2  # another key
            assert [await status(None) for _ in range(2)] == [401, 401]
            assert len(svc.seen) == 4  # a 401 with Set-Cookie is not cached (nginx)
            for token in ("Bearer good", "Bearer nostore", "Bearer forbidden"):
                before = len(svc.seen)
                await status(token)
                await status(token)
                assert len(svc.seen) == before + 2, token  # Set-Cookie, no-store, 403: not cached


async def test_set_cookie_goes_where_nginx_add_header_puts_it():
    """Without auth-always-set-cookie, the service's Set-Cookie is added to 2xx/3xx answers
    only (nginx add_header); with it, to every answer, a refusal included."""
    async with auth_service() as (_, base):
        ings = [app_ingress("api", HOST, "web", {NGX + "auth-url": f"{base}/verify"}),
                app_ingress("always", "always.example.com", "web", {
                    NGX + "auth-url": f"{base}/verify", NGX + "auth-always-set-cookie": "true"})]
        async with gateway_over(ings, "127.0.77.5") as (app, _), aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{app.proxy.port}"

            async def cookies(host: str, path: str, token: str | None) -> tuple[int, list[str]]:
                headers = {"Host": host, **({"Authorization": token} if token else {})}
                async with s.get(f"{url}{path}", headers=headers) as r:
                    return r.status, r.headers.getall("Set-Cookie", [])

            assert await cookies(HOST, "/ok", "Bearer good") == (200, ["session=1; Path=/"])
            assert await cookies(HOST, "/status/500", "Bearer good") == (500, [])
            assert await cookies(HOST, "/ok", None) == (401, [])
            assert await cookies("always.example.com", "/status/500", "Bearer good") == (
                500, ["session=1; Path=/"])
            assert await cookies("always.example.com", "/ok", None) == (401, ["tried=1"])


def with_configmaps(ann: dict, maps: dict):
    problems: list = []
    auth = parse_external_auth(Annotations("demo/x", ann, problems), "demo",
                               lambda ns, name: maps.get((ns, name)))
    return auth, [p.message for p in problems]


@pytest.mark.parametrize("value, data, problem", [
    ("nope", None, "ConfigMap demo/nope not found"),
    ("other/nope", None, "ConfigMap other/nope not found"),
    ("Bad_Name", None, "'Bad_Name' is not a ConfigMap name"),
    ("hdrs", {"X Tenant": "a"}, "ConfigMap demo/hdrs: invalid header(s) X Tenant"),
    ("hdrs", {"X-Tenant": "a\r\nX-Evil: 1"}, "ConfigMap demo/hdrs: invalid header(s) X-Tenant"),
    ("hdrs", {"X-Time": "$request_time"}, "ConfigMap demo/hdrs: nginx variable(s) $request_time not supported"),
])
def test_proxy_set_headers_that_cannot_be_used_deny_the_route(value, data, problem):
    maps = {("demo", "hdrs"): {"data": data}} if data is not None else {}
    assert_denied(*with_configmaps({NGX + "auth-url": "http://a/", NGX + "auth-proxy-set-headers": value}, maps),
                  problem)


def test_proxy_set_headers_come_from_the_configmap():
    maps = {("demo", "hdrs"): {"data": {"X-Tenant": " acme ", "X-Host": "$host"}},
            ("auth", "shared"): {"data": {"X-Shared": "1"}}, ("demo", "empty"): {}}
    auth, problems = with_configmaps({NGX + "auth-url": "http://a/", NGX + "auth-proxy-set-headers": "hdrs"}, maps)
    assert problems == [] and auth.proxy_set_headers == (("X-Host", "$host"), ("X-Tenant", "acme"))
    assert auth.describe["proxySetHeaders"] == {"X-Host": "$host", "X-Tenant": "acme"}
    auth, _ = with_configmaps({NGX + "auth-url": "http://a/", NGX + "auth-proxy-set-headers": "auth/shared"}, maps)
    assert auth.proxy_set_headers == (("X-Shared", "1"),)
    auth, _ = with_configmaps({NGX + "auth-url": "http://a/", NGX + "auth-proxy-set-headers": "empty"}, maps)
    assert auth.proxy_set_headers == () and auth.broken is None
    _, problems = with_configmaps({NGX + "auth-proxy-set-headers": "hdrs"}, maps)
    assert problems == ["needs auth-url; ignored"]


async def test_proxy_set_headers_reach_the_check_and_follow_the_configmap():
    async with auth_service() as (svc, base):
        ing = app_ingress("api", HOST, "web", {NGX + "auth-url": f"{base}/verify",
                                               NGX + "auth-proxy-set-headers": "check-headers"})
        async with gateway_over([ing], "127.0.77.6") as (app, up), aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{app.proxy.port}"
            headers = {"Host": HOST, "Authorization": "Bearer good", "X-Tenant": "spoofed", "X-Drop": "x"}
            async with s.get(f"{url}/a", headers=headers) as r:
                assert r.status == 503  # the ConfigMap is missing: denied, never unchecked
            assert svc.seen == []
            await app.hub.create(CONFIG_MAPS, {"metadata": {"name": "check-headers", "namespace": "demo"},
                                               "data": {"X-Tenant": "acme", "X-Host": "$host", "X-Drop": ""}})
            seen = await eventually_checked(s, url, headers, svc)
            assert seen["X-Tenant"] == "acme" and seen["X-Host"] == HOST  # replaced; variables expanded
            assert "X-Drop" not in seen  # an empty value removes the client's header
            assert up.requests[-1].header("x-tenant") == "spoofed"  # only the check is changed
            assert [str(p) for p in app.problems] == []  # supported, and the ConfigMap found
            await app.hub.replace(CONFIG_MAPS, {"metadata": {"name": "check-headers", "namespace": "demo"},
                                                "data": {"X-Tenant": "globex"}})
            for _ in range(50):  # a change to the ConfigMap rebuilds the table within a second
                async with s.get(f"{url}/a", headers=headers) as r:
                    assert r.status == 200
                if svc.seen[-1][2].get("X-Tenant") == "globex":
                    break
                await asyncio.sleep(0.05)
            assert svc.seen[-1][2]["X-Tenant"] == "globex" and svc.seen[-1][2]["X-Drop"] == "x"


async def eventually_checked(s: aiohttp.ClientSession, url: str, headers: dict, svc: AuthService) -> dict:
    """Ask until the route is no longer denied (the table rebuilt); the check's headers."""
    for _ in range(50):
        async with s.get(f"{url}/a", headers=headers) as r:
            if r.status != 503:
                assert r.status == 200
                return svc.seen[-1][2]
        await asyncio.sleep(0.05)
    raise AssertionError("still denied")


def test_only_configmaps_that_can_be_header_maps_keep_their_data():
    meta = {"name": "x", "namespace": "demo", "managedFields": [{"big": 1}], "annotations": {"a": "b"}}
    kept = trim_configmap({"metadata": meta, "data": {"X-Tenant": "acme"}, "binaryData": {"b": "AA=="}})
    assert kept == {"metadata": {"name": "x", "namespace": "demo"}, "data": {"X-Tenant": "acme"}}
    dashboard = trim_configmap({"metadata": meta, "data": {"dashboard.json": "{" * 10}})
    assert dashboard == {"metadata": {"name": "x", "namespace": "demo"},
                         "unusable": "invalid header(s) dashboard.json"}
    big = trim_configmap({"metadata": meta, "data": {"X-Big": "v" * (MAX_HEADER_MAP + 1)}})
    assert "data" not in big and big["unusable"] == "larger than 64 KiB"
    assert_denied(*with_configmaps({NGX + "auth-url": "http://a/", NGX + "auth-proxy-set-headers": "dash"},
                                   {("demo", "dash"): dashboard}),
                  "ConfigMap demo/dash: invalid header(s) dashboard.json")


class ConfigMapsForbidden:
    """The hub as a gateway without RBAC for ConfigMaps sees it: their list and watch are
    refused (served over HTTP by KubeApiServer, so the client gets a real 403 Status)."""

    def __init__(self, hub: object) -> None:
        self._hub = hub

    def __getattr__(self, name: str) -> object:
        return getattr(self._hub, name)

    async def list(self, resource, *args, **kw):  # noqa: ANN001, ANN002, ANN003
        if resource.plural == "configmaps":
            raise Forbidden('configmaps is forbidden: User "gateway" cannot list resource "configmaps"')
        return await self._hub.list(resource, *args, **kw)


async def test_without_rbac_for_configmaps_the_gateway_still_becomes_ready(tmp_path):
    async with auth_service() as (svc, base):
        up = await Upstream("east", host="127.0.77.7").start()
        hub, members = await world({"east": up})
        await hub.create(INGRESSES, app_ingress("api", HOST, "web", {NGX + "auth-url": f"{base}/verify"}))
        await hub.create(INGRESSES, app_ingress("hdr", "hdr.example.com", "web", {
            NGX + "auth-url": f"{base}/verify", NGX + "auth-proxy-set-headers": "check-headers"}))
        server = await serve_cluster(ConfigMapsForbidden(hub), "127.0.0.1", 0)  # type: ignore[arg-type]
        (tmp_path / "kc").write_text(yaml.safe_dump(server.kubeconfig()))
        client = KubeCluster("hub", load_kubeconfig(str(tmp_path / "kc")))
        app = GatewayApp(client, members, listen=("127.0.0.1", 0), admin=None)
        app.configmap_wait = 0.5
        await app.start()
        try:
            await app.wait_ready(10)  # not held back by the ConfigMaps it cannot read
            async with aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{app.proxy.port}/a"
                async with s.get(url, headers={"Host": HOST, "Authorization": "Bearer good"}) as r:
                    assert r.status == 200
                async with s.get(url, headers={"Host": "hdr.example.com", "Authorization": "Bearer good"}) as r:
                    assert r.status == 503  # its ConfigMap cannot be read: denied, never unchecked
        finally:
            await app.stop(0.5)
            await client.close()
            await server.stop()
            await up.stop()
