"""default-backend and custom-http-errors (ingress-nginx semantics): the routing part, the data
path through real sockets (ProxyServer, real upstream servers), and the whole gateway over an
embedded fleet."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web
from fleetkit import endpoint, eventually, source_slice
from gwkit import Env, Upstream, dead_endpoint, decision, raw, read_request, read_response
from test_gw_routing_kit import NGX, build, decide, ingress, path, problems_for, rule, simple

from gateway.app import GatewayApp
from gateway.proxy import Limits
from gateway.routing.errors import ErrorSettings, bind_errors
from gateway.types import BackendRef, Endpoint, RetryPolicy
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import ENDPOINT_SLICES, INGRESSES, NAMESPACES, SERVICES

MSE = "mse.ingress.kubernetes.io/"
WEB = BackendRef("demo", "web", 80)
ERRORS = BackendRef("demo", "errors", 8080)
HOST = "shop.example.com"
SERVICES_MAP = {("default", "errors"): {"spec": {"ports": [{"port": 8080}, {"port": 9090}]}},
                ("default", "main"): {"spec": {"ports": [{"port": 80}]}}}


class Pages:
    """A custom error-pages backend (like ingress-nginx's images/custom-error-pages): answers
    with the status in X-Code, 200 without one (`status` overrides both); records requests."""

    def __init__(self, status: int | None = None) -> None:
        self.status = status
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _answer(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append((request.method, request.path_qs, headers, body))
        code = self.status or int(headers.get("x-code", "200"))
        text = f"page {headers.get('x-code')} for {headers.get('x-original-uri')}"
        return web.Response(status=code, text=text, headers={"X-Page": "yes"})

    async def start(self) -> Pages:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    def endpoint(self) -> Endpoint:
        return Endpoint(cluster="c2", ip="127.0.0.1", port=self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def intercepting(codes: frozenset[int] = frozenset({404, 503}), **kw: object):
    """A decision for WEB of Ingress demo/shop with default-backend ERRORS and these codes."""
    return bind_errors(decision(WEB, route_name=f"demo/shop|{HOST}/", **kw),
                       ErrorSettings(ERRORS, codes), "demo/shop")


@contextlib.asynccontextmanager
async def proxied(codes: frozenset[int] = frozenset({404, 503}), pages_status: int | None = None,
                  **kw: object):
    env = Env()
    pages = await Pages(pages_status).start()
    try:
        app = await env.upstream("app", ref=WEB)
        env.backends[ERRORS] = [pages.endpoint()]
        await env.start(("*", "/", intercepting(codes, **kw)))
        yield env, app, pages
    finally:
        await env.close()
        await pages.stop()


async def fetch(env: Env, target: str, method: str = "GET", **kw) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, env.url(target), **kw) as r:
        return r.status, dict(r.headers), await r.read()


# -- routing -------------------------------------------------------------------------------


def test_annotations_bind_the_default_backend_as_last_fallback_and_the_error_page():
    ann = {NGX + "default-backend": "errors", NGX + "custom-http-errors": "404, 503,404",
           MSE + "destination": "60% main.default.svc.cluster.local:80\n"
                                "40% main.default.svc.cluster.local:80 cluster2-beijing"}
    table, problems = build(simple("shop", ann=ann), services=SERVICES_MAP)
    assert problems == []
    d = decide(table)
    assert d is not None and d.error_codes == frozenset({404, 503})
    default = BackendRef("default", "errors", 8080)  # the Service's first port
    assert d.fallbacks[-1] == default and len(d.fallbacks) == 2  # after the other destination
    assert d.error_page is not None and d.error_page.backend == default
    assert dict(d.error_page.set_headers) == {
        "X-Namespace": "default", "X-Ingress-Name": "shop", "X-Service-Name": "main",
        "X-Service-Port": "80"}
    assert d.error_page.error_codes == frozenset() and d.error_page.fallbacks == ()
    assert default in table.backends()
    routes = table.describe()
    assert routes[0]["errors"] == {"defaultBackend": "default/errors:8080",
                                   "customHttpErrors": [404, 503]}


def test_mse_prefix_and_default_backend_alone():
    table, problems = build(simple("shop", ann={MSE + "default-backend": "errors"}),
                            services=SERVICES_MAP)
    d = decide(table)
    assert problems == [] and d is not None
    assert d.fallbacks == (BackendRef("default", "errors", 8080),)
    assert d.error_codes == frozenset() and d.error_page is not None


def test_bad_annotations_are_named_and_the_rest_of_the_ingress_is_served():
    cases = {
        "404,abc": ("custom-http-errors", "expected status codes 400-599"),
        "302,404": ("custom-http-errors", "expected status codes 400-599"),
        "600": ("custom-http-errors", "expected status codes 400-599"),
    }
    for codes, (annotation, text) in cases.items():
        table, problems = build(simple("shop", ann={NGX + "default-backend": "errors",
                                                    NGX + "custom-http-errors": codes}),
                                services=SERVICES_MAP)
        assert any(text in m for m in problems_for(problems, "default/shop", annotation)), codes
        d = decide(table)
        assert d is not None and d.backend.service == "main"
        assert d.error_codes == frozenset()  # ignored ...
        assert d.fallbacks == (BackendRef("default", "errors", 8080),)  # ... the other kept
    for value, text in (("missing", "Service default/missing is not known"),
                        ("other/errors", "is not a Service name")):
        table, problems = build(simple("shop", ann={NGX + "default-backend": value,
                                                    NGX + "custom-http-errors": "404"}),
                                services=SERVICES_MAP)
        assert any(text in m for m in problems_for(problems, "default/shop", "default-backend"))
        assert any("default-backend annotation is unusable" in m
                   for m in problems_for(problems, "default/shop", "custom-http-errors"))
        d = decide(table)
        assert d is not None and d.fallbacks == () and d.error_page is None
    # without default-backend and without a global default backend: nothing to ask
    table, problems = build(simple("shop", ann={NGX + "custom-http-errors": "404"}))
    assert any("no default-backend annotation and no --default-backend-service" in m
               for m in problems_for(problems, "default/shop", "custom-http-errors"))
    assert decide(table).error_page is None  # type: ignore[union-attr]


GLOBAL = BackendRef("default", "errors", 8080)


def test_the_global_default_backend_answers_what_no_rule_matches():
    """--default-backend-service: an unknown host, or a known host's unmatched path, goes to
    it (ingress-nginx's upstream-default-backend) instead of a 404; matched requests do not."""
    table, problems = build(simple("shop", "a.example.com", "/app", svc="main"),
                            services=SERVICES_MAP, default_backend="default/errors")
    assert problems == []
    for host, target in (("nobody.example.com", "/"), ("a.example.com", "/other")):
        d = decide(table, host, target)
        assert d is not None and d.backend == GLOBAL and d.route_name == "-|(default-backend)"
    assert decide(table, "a.example.com", "/app/x").backend.service == "main"
    assert GLOBAL in table.backends()
    assert table.describe_default() == {"route": "-|(default-backend)", "backend": str(GLOBAL),
                                        "namespace": "default", "service": "errors", "port": 8080,
                                        "cluster": None, "subset": {}}


def test_the_global_default_backend_serves_pages_but_is_no_fallback():
    table, problems = build(simple("shop", ann={NGX + "custom-http-errors": "404,503"}),
                            services=SERVICES_MAP, default_backend="default/errors")
    assert problems == []
    d = decide(table)
    assert d is not None and d.error_codes == frozenset({404, 503})
    assert d.error_page is not None and d.error_page.backend == GLOBAL
    assert d.fallbacks == ()  # ingress-nginx: the rule's own 503, not the default backend
    # an Ingress's own default-backend wins; an unusable one is reported, not replaced
    table, problems = build(simple("shop", ann={NGX + "default-backend": "main",
                                                NGX + "custom-http-errors": "404"}),
                            services=SERVICES_MAP, default_backend="default/errors")
    assert decide(table).error_page.backend == BackendRef("default", "main", 80)  # type: ignore[union-attr]
    table, problems = build(simple("shop", ann={NGX + "default-backend": "missing",
                                                NGX + "custom-http-errors": "404"}),
                            services=SERVICES_MAP, default_backend="default/errors")
    assert decide(table).error_page is None  # type: ignore[union-attr]
    assert problems_for(problems, "default/shop", "custom-http-errors")


def test_an_unknown_global_default_backend_is_reported_and_404_stays():
    table, problems = build(simple("shop"), services=SERVICES_MAP, default_backend="default/nope")
    assert [str(p) for p in problems] == [
        "ingress -: --default-backend-service default/nope: Service default/nope is not known in "
        "any member cluster; requests no rule matches get 404 until it is"]
    assert decide(table, "nobody.example.com") is None
    assert table.describe_default() is None


def test_canary_inherits_the_main_rule_errors_and_falls_back_to_its_default_backend():
    main = simple("shop", ann={NGX + "default-backend": "errors",
                               NGX + "custom-http-errors": "503"})
    canary = simple("shop-canary", svc="v2", ann={
        NGX + "canary": "true", NGX + "canary-by-header": "x-canary",
        NGX + "default-backend": "other"})
    table, problems = build(main, canary, services=SERVICES_MAP)
    assert any("not applied on a canary" in m
               for m in problems_for(problems, "default/shop-canary", "default-backend"))
    d = decide(table, headers={"x-canary": "always"})
    assert d is not None and d.backend.service == "v2"
    assert d.fallbacks == (BackendRef("default", "main", 80), BackendRef("default", "errors", 8080))
    assert d.error_codes == frozenset({503}) and d.error_page is not None
    assert dict(d.error_page.set_headers)["X-Service-Name"] == "main"  # the location's service


def test_catch_all_and_host_default_backends_get_them_too():
    ann = {NGX + "default-backend": "errors", NGX + "custom-http-errors": "404"}
    host_default = ingress("shop", rule("a.example.com", path("/api", "main")),
                           ann=ann, default={"service": {"name": "main", "port": {"number": 80}}})
    table, _ = build(host_default, services=SERVICES_MAP)
    for p in ("/api", "/elsewhere"):
        d = decide(table, p=p)
        assert d is not None and d.error_codes == frozenset({404}), p
    catch_all = ingress("all", ann=ann, default={"service": {"name": "main",
                                                             "port": {"number": 80}}})
    table, problems = build(catch_all, services=SERVICES_MAP)
    d = decide(table, host="anything.example.org")
    assert problems == [] and d is not None and d.error_codes == frozenset({404})
    assert d.fallbacks == (BackendRef("default", "errors", 8080),)


# -- the data path -------------------------------------------------------------------------


async def test_listed_codes_get_the_default_backends_page_with_the_ingress_nginx_headers():
    async with proxied() as (env, app, pages):
        for code in (404, 503):
            status, headers, body = await fetch(
                env, f"/status/{code}?q=1", headers={"Accept": "application/json",
                                                     "X-Code": "forged", "Host": HOST})
            # ingress-nginx's `error_page <code> = @custom...`: the page's own answer, as is
            assert status == code and body == f"page {code} for /status/{code}?q=1".encode()
            assert headers["X-Page"] == "yes" and "app" not in body.decode()
            method, target, seen, _ = pages.seen[-1]
            assert (method, target) == ("GET", "/?q=1")  # rewrite (.*) / break keeps the query
            assert seen["x-code"] == str(code) and seen["x-format"] == "application/json"
            assert seen["x-original-uri"] == f"/status/{code}?q=1"
            assert (seen["x-namespace"], seen["x-ingress-name"]) == ("demo", "shop")
            assert (seen["x-service-name"], seen["x-service-port"]) == ("web", "80")
            assert seen["host"] == HOST
            assert seen["x-request-id"] == app.requests[-1].header("x-request-id")
        # a page that answers 200 is served with 200, as nginx does
        pages.status = 200
        status, _, body = await fetch(env, "/status/404")
        assert status == 200 and body.startswith(b"page 404")
        # codes not listed pass untouched; so does everything else
        status, headers, body = await fetch(env, "/status/500")
        assert (status, body) == (500, b"app 500\n") and "X-Page" not in headers
        status, _, body = await fetch(env, "/hello")
        assert status == 200 and b'"server": "app"' in body
        assert len(pages.seen) == 3
        # the intercepted answers were drained: one upstream connection served them all
        assert app.conns_total == 1
        # outlier detection still sees the upstream's answers (the 503 and the 500)
        mine = [(o, st) for e, o, st in env.clusters.reports if e.port == app.port]
        assert mine == [("success", 404), ("http_5xx", 503), ("success", 404),
                        ("http_5xx", 500), ("success", 200)]


async def test_non_get_methods_keep_method_and_body_like_nginx_named_locations():
    async with proxied() as (env, app, pages):
        payload = b"x" * 5000
        status, _, _ = await fetch(env, "/status/404?y=2", "POST", data=payload)
        assert status == 404
        method, target, seen, body = pages.seen[-1]
        assert (method, target, body) == ("POST", "/?y=2", payload)
        assert app.requests[-1].body == payload
        # chunked request bodies too, and HEAD stays HEAD (no body back)
        async def gen():
            yield b"abc"
            yield b"def"
        status, _, _ = await fetch(env, "/status/503", "PUT", data=gen())
        assert status == 503 and pages.seen[-1][0] == "PUT" and pages.seen[-1][3] == b"abcdef"
        status, headers, body = await fetch(env, "/status/404", "HEAD")
        assert (status, body) == (404, b"") and pages.seen[-1][0] == "HEAD"


async def test_a_request_body_too_long_to_send_again_gets_the_upstream_answer():
    env = Env()
    pages = await Pages().start()
    try:
        await env.upstream("app", ref=WEB)
        env.backends[ERRORS] = [pages.endpoint()]
        await env.start(("*", "/", intercepting()), limits=Limits(retry_buffer=1024))
        status, _, body = await fetch(env, "/status/404", "POST", data=b"y" * 5000)
        assert (status, body) == (404, b"app 404\n") and pages.seen == []
        status, _, body = await fetch(env, "/status/404", "POST", data=b"y" * 1000)
        assert (status, body) == (404, b"page 404 for /status/404")
        assert pages.seen[-1][3] == b"y" * 1000
    finally:
        await env.close()
        await pages.stop()


class BigError:
    """An upstream that answers 404 with a huge body, streamed until the reader goes away."""

    TOTAL = 256 * 1024 * 1024

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.sent = 0
        self.done = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> BigError:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"e" * 65536
        try:
            await read_request(reader)
            if self.chunked:
                writer.write(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % self.TOTAL)
            while self.sent < self.TOTAL:
                writer.write(b"10000\r\n" + block + b"\r\n" if self.chunked else block)
                self.sent += len(block)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.done.set()
            writer.close()


async def test_a_large_streamed_error_body_is_never_read_whole():
    for chunked in (False, True):
        env = Env()
        pages = await Pages().start()
        big = await BigError(chunked).start()
        try:
            env.backends[WEB] = [Endpoint("c1", "127.0.0.1", big.port)]
            env.backends[ERRORS] = [pages.endpoint()]
            await env.start(("*", "/", intercepting()))
            loop = asyncio.get_running_loop()
            start = loop.time()
            status, _, body = await fetch(env, "/big")
            assert status == 404 and body == b"page 404 for /big"
            assert loop.time() - start < 2.0
            await asyncio.wait_for(big.done.wait(), 5.0)  # the gateway closed the connection
            assert big.sent < BigError.TOTAL // 8, (chunked, big.sent)
            assert env.proxy is not None  # and no upstream connection is left behind
            pool = env.proxy.pool
            pool.close_idle()
            await eventually(lambda p=pool: p.open_connections == 0, within=2.0)
        finally:
            await env.close()
            await pages.stop()
            assert big.server is not None
            big.server.close()


async def test_default_backend_down_or_empty():
    async with proxied() as (env, app, pages):
        # down (connection refused): 502, as nginx answers when its @custom location fails
        env.backends[ERRORS] = [dead_endpoint("c2")]
        status, _, body = await fetch(env, "/status/404")
        assert status == 502 and b"upstream connect error" in body
        # no usable endpoint: the original status with a short body naming the default backend
        env.backends[ERRORS] = []
        status, _, body = await fetch(env, "/status/503")
        assert status == 503
        assert body == b"upstream answered 503; the default backend demo/errors:8080 has no usable endpoint\n"
        async with raw(env.port) as (reader, writer):  # the client connection stays usable
            for _ in range(2):
                writer.write(b"GET /status/404 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_response(reader)).status == 404
        assert pages.seen == []


async def test_default_backend_serves_when_the_service_has_no_endpoint_and_not_otherwise():
    async with proxied() as (env, app, pages):
        status, _, body = await fetch(env, "/shop?x=1")
        assert status == 200 and b'"server": "app"' in body and pages.seen == []
        env.backends[WEB] = []  # the Service lost its pods in every cluster
        status, headers, body = await fetch(env, "/shop?x=1", "POST", data=b"order")
        # a plain fallback: the request as it is (ingress-nginx swaps the location's upstream)
        assert status == 200 and headers["X-Page"] == "yes"
        method, target, seen, sent = pages.seen[-1]
        assert (method, target, sent) == ("POST", "/shop?x=1", b"order") and "x-code" not in seen
        env.backends[WEB] = [app.endpoint("c1")]
        status, _, body = await fetch(env, "/shop")
        assert status == 200 and b'"server": "app"' in body and len(pages.seen) == 1


async def test_retries_on_a_status_come_before_the_error_page():
    env = Env()
    pages = await Pages().start()
    try:
        first = await env.upstream("first", ref=WEB)
        second = await env.upstream("second", "c2", ref=WEB)
        first.default_status = second.default_status = 503
        env.backends[ERRORS] = [pages.endpoint()]
        retry = RetryPolicy(attempts=2, on_statuses=(503,), backoff_base=0.001)
        await env.start(("*", "/", intercepting(frozenset({503}), retry=retry)))
        status, _, body = await fetch(env, "/x")
        assert status == 503 and body == b"page 503 for /x"
        assert len(first.requests) == len(second.requests) == 1  # both tried first
        assert len(pages.seen) == 1 and env.hooks.retries == 1
    finally:
        await env.close()
        await pages.stop()


# -- the gateway over an embedded fleet ------------------------------------------------------


async def _fleet(app_up: Upstream, pages: Pages) -> tuple[EmbeddedCluster, EmbeddedCluster]:
    hub, member = EmbeddedCluster("hub"), EmbeddedCluster("east", service_cidr="10.61.0.0/16")
    for c in (hub, member):
        await c.create(NAMESPACES, {"metadata": {"name": "demo"}})
    for name, port, target in (("web", 80, app_up.port), ("errors", 8080, pages.port)):
        await member.create(SERVICES, {"metadata": {"name": name, "namespace": "demo"}, "spec": {
            "selector": {"app": name}, "ports": [{"name": "http", "port": port,
                                                 "targetPort": target}]}})
        await member.create(ENDPOINT_SLICES, source_slice(
            name, "demo", [endpoint("127.0.0.1")], ports=[{"name": "http", "port": target}]))
    return hub, member


def _ingress(name: str, host: str, annotations: dict) -> dict:
    return {"metadata": {"name": name, "namespace": "demo", "annotations": annotations},
            "spec": {"ingressClassName": "amcs", "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}


async def test_gateway_end_to_end_over_an_embedded_fleet():
    app_up = await Upstream("app").start()
    pages = await Pages().start()
    hub, member = await _fleet(app_up, pages)
    await hub.create(INGRESSES, _ingress("shop", HOST, {
        NGX + "default-backend": "errors", NGX + "custom-http-errors": "404,503"}))
    await hub.create(INGRESSES, _ingress("bad", "bad.example.com", {
        NGX + "default-backend": "errors", NGX + "custom-http-errors": "404,oops"}))
    gw = GatewayApp(hub, {"east": member}, listen=("127.0.0.1", 0), admin=("127.0.0.1", 0))
    await gw.start()
    try:
        await gw.wait_ready()
        base = f"http://127.0.0.1:{gw.proxy.port}"

        async def get(target: str, host: str = HOST) -> tuple[int, str]:
            async with aiohttp.ClientSession() as s, \
                    s.get(base + target, headers={"Host": host, "Accept": "text/html"}) as r:
                return r.status, await r.text()

        status, text = await get("/hello")
        assert status == 200 and '"server": "app"' in text
        status, text = await get("/status/404?a=b")
        assert (status, text) == (404, "page 404 for /status/404?a=b")
        _, target, seen, _ = pages.seen[-1]
        assert target == "/?a=b" and seen["x-format"] == "text/html"
        assert (seen["x-namespace"], seen["x-ingress-name"], seen["x-service-name"],
                seen["x-service-port"]) == ("demo", "shop", "web", "80")
        assert await get("/status/500") == (500, "app 500\n")
        # the bad Ingress: its custom-http-errors is reported; it is served, errors untouched
        problems = [p for p in gw.problems if p.ingress == "demo/bad"]
        assert [p.annotation for p in problems] == [NGX + "custom-http-errors"]
        assert await get("/status/404", "bad.example.com") == (404, "app 404\n")
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{gw.admin_port}/routes") as r:
            routes = (await r.json())["routes"]
        shop = next(r for r in routes if r["host"] == HOST)
        assert shop["errors"] == {"defaultBackend": "demo/errors:8080",
                                  "customHttpErrors": [404, 503]}
        # every pod of web goes away: the default backend takes the requests, as they are
        await member.delete(ENDPOINT_SLICES, "demo", "web-abcde")
        await eventually(lambda: not gw.upstream.describe(WEB), within=2.0)
        status, text = await get("/gone")
        assert (status, pages.seen[-1][1]) == (200, "/gone") and "x-code" not in pages.seen[-1][2]
        # the default backend's own 404 is a 404 of this location: its page is asked for
        pages.status = 404
        assert await get("/gone") == (404, "page 404 for /gone")
        assert [s[1] for s in pages.seen[-2:]] == ["/gone", "/"]
    finally:
        await gw.stop()
        await app_up.stop()
        await pages.stop()
