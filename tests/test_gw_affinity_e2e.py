"""Cookie session affinity end to end: Ingresses in an embedded hub, a Service's pods in two
member clusters (real HTTP servers on 127.0.0.1), through the real GatewayApp."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from fleetkit import endpoint, eventually, source_slice
from gwkit import REF, Env, decision, raw, read_response
from yarl import URL

from gateway.app import GatewayApp
from gateway.routing.affinity import backend_tag, bind_affinity, decode_sticky
from gateway.types import BackendRef, SessionAffinity
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.resources import ENDPOINT_SLICES, INGRESSES, NAMESPACES, SERVICES

NGX = "nginx.ingress.kubernetes.io/"
OURS = "multicluster.amcs.dev/"
HOST = "shop.example.com"
STICKY = {NGX + "affinity": "cookie", NGX + "session-cookie-name": "route"}


class Pod:
    """A pod: answers its name, with a Set-Cookie of its own (the gateway must keep it)."""

    def __init__(self, name: str, cluster: str) -> None:
        self.name, self.cluster = name, cluster
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        return web.Response(text=self.name, headers={"Set-Cookie": f"app={self.name}; Path=/"})

    async def start(self) -> Pod:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._answer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class World:
    """Hub + members + pods + the gateway; each pod is its own EndpointSlice `web-<pod>`."""

    def __init__(self) -> None:
        self.hub = EmbeddedCluster("hub")
        self.members: dict[str, EmbeddedCluster] = {}
        self.pods: dict[str, Pod] = {}
        self.app: GatewayApp | None = None
        self.url = ""

    async def add_pod(self, name: str, cluster: str) -> Pod:
        pod = self.pods[name] = await Pod(name, cluster).start()
        await self.members[cluster].create(ENDPOINT_SLICES, source_slice(
            "web", "demo", [endpoint("127.0.0.1")], name=f"web-{name}",
            ports=[{"name": "http", "port": pod.port, "protocol": "TCP"}]))
        return pod

    async def remove_pod(self, name: str) -> None:
        """The pod is deleted: its endpoint leaves the Service (its server keeps running)."""
        await self.members[self.pods[name].cluster].delete(ENDPOINT_SLICES, "demo", f"web-{name}")

    async def ingress(self, name: str, annotations: dict, host: str = HOST) -> None:
        await self.hub.create(INGRESSES, {
            "metadata": {"name": name, "namespace": "demo", "annotations": annotations},
            "spec": {"ingressClassName": "amcs", "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})


@contextlib.asynccontextmanager
async def world(pods: dict[str, list[str]]) -> AsyncIterator[World]:
    w = World()
    await w.hub.create(NAMESPACES, {"metadata": {"name": "demo"}})
    try:
        for i, (cluster, names) in enumerate(pods.items()):
            c = w.members[cluster] = EmbeddedCluster(cluster, service_cidr=f"10.{80 + i}.0.0/16")
            await c.create(NAMESPACES, {"metadata": {"name": "demo"}})
            await c.create(SERVICES, {"metadata": {"name": "web", "namespace": "demo"},
                                      "spec": {"selector": {"app": "web"}, "ports": [
                                          {"name": "http", "port": 80, "targetPort": 8080}]}})
            for name in names:
                await w.add_pod(name, cluster)
        w.app = GatewayApp(w.hub, w.members, listen=("127.0.0.1", 0), admin=("127.0.0.1", 0))
        await w.app.start()
        await w.app.wait_ready()
        w.url = f"http://127.0.0.1:{w.app.proxy.port}/cart"
        yield w
    finally:
        if w.app is not None:
            await w.app.stop()
        for pod in w.pods.values():
            await pod.stop()


class Client:
    """Requests with an explicit cookie (no jar): (pod name, our cookie value if set)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, name: str = "route") -> None:
        self.session, self.url, self.name = session, url, name
        self.upstream_cookies: list[str] = []

    async def get(self, cookie: str | None = None, host: str = HOST,
                  headers: dict | None = None) -> tuple[str, str | None]:
        hdrs = {"Host": host, **(headers or {})}
        if cookie is not None:
            hdrs["Cookie"] = f"app=x; {self.name}={cookie}"
        async with self.session.get(self.url, headers=hdrs) as r:
            assert r.status == 200, (r.status, await r.text())
            ours = None
            for line in r.headers.getall("Set-Cookie", []):
                if line.startswith(self.name + "="):
                    assert ours is None, "one affinity cookie per response"
                    ours = line
                else:
                    self.upstream_cookies.append(line)
            return await r.text(), ours


def value_of(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


async def serving(w: World, client: Client) -> bool:
    try:
        await client.get()
        return True
    except AssertionError:
        return False


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


async def test_first_response_pins_the_client_to_its_pod_across_clusters():
    async with world({"east": ["e1", "e2"], "west": ["w1"]}) as w, session() as s:
        await w.ingress("shop", {**STICKY, NGX + "affinity-mode": "persistent",
                                 NGX + "session-cookie-max-age": "3600"})
        c = Client(s, w.url)
        await eventually(lambda: serving(w, c), within=3.0)
        # Clients without the cookie are spread round robin; each gets a cookie for its pod.
        issued: dict[str, str] = {}
        served = Counter()
        for _ in range(30):
            pod, line = await c.get()
            served[pod] += 1
            assert line is not None and line.endswith("; Max-Age=3600; Path=/; HttpOnly"), line
            issued.setdefault(pod, value_of(line))
        assert served == {"e1": 10, "e2": 10, "w1": 10}
        assert len(set(issued.values())) == 3
        # The upstream's own Set-Cookie goes through next to ours.
        assert set(c.upstream_cookies[-30:]) == {f"app={p}; Path=/" for p in ("e1", "e2", "w1")}
        # With the cookie every request goes back to its pod, in either cluster, and the
        # cookie is not set again; cookie-less requests in between keep round-robining.
        others = Counter()
        for pod, value in issued.items():
            for _ in range(6):
                assert await c.get(value) == (pod, None)
                others[(await c.get())[0]] += 1
        assert others == {"e1": 6, "e2": 6, "w1": 6}
        # A browser-like client with a cookie jar: one Set-Cookie, then sticky.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as jar:
            seen = Counter()
            for _ in range(8):
                async with jar.get(w.url, headers={"Host": HOST}) as r:
                    seen[await r.text()] += 1
            assert len(seen) == 1 and jar.cookie_jar.filter_cookies(URL(w.url))["route"].value
        # /routes shows the rule's affinity.
        async with s.get(f"http://127.0.0.1:{w.app.admin_port}/routes") as r:
            routes = (await r.json())["routes"]
        aff = routes[0]["affinity"]
        assert (aff["cookie"], aff["mode"], aff["path"], aff["max_age"]) == (
            "route", "persistent", "/", 3600)


async def test_cookie_kept_on_a_retry_and_replaced_when_its_pod_goes_away():
    async with world({"east": ["e1", "e2"], "west": ["w1"]}) as w, session() as s:
        await w.ingress("shop", STICKY)  # balanced (default)
        c = Client(s, w.url)
        await eventually(lambda: serving(w, c), within=3.0)
        cookie = None
        while cookie is None:
            pod, line = await c.get()
            if pod == "e2":
                cookie = value_of(line)
        assert decode_sticky(cookie).pos is not None  # balanced: carries its ring point
        assert (await c.get(cookie))[0] == "e2"
        # The pod's server dies but it is still listed: the request is retried elsewhere
        # and the client keeps its cookie (no change-on-failure).
        await w.pods["e2"].stop()
        pod, line = await c.get(cookie)
        assert pod != "e2" and line is None
        # The pod is deleted: the next request is balanced and re-pinned, then sticks.
        await w.remove_pod("e2")

        async def moved() -> bool:
            pod, line = await c.get(cookie)
            return line is not None and pod != "e2"

        await eventually(moved, within=3.0)
        pod, line = await c.get(cookie)
        new = value_of(line)
        assert decode_sticky(new).key != decode_sticky(cookie).key
        assert {await c.get(new) for _ in range(6)} == {(pod, None)}


async def test_canary_sessions_stay_on_their_side():
    async with world({"east": ["e1", "e2"], "west": ["w1", "w2"]}) as w, session() as s:
        await w.ingress("shop", STICKY)
        await w.ingress("shop-canary", {NGX + "canary": "true", NGX + "canary-weight": "50",
                                        NGX + "canary-by-header": "x-canary",
                                        OURS + "target-cluster": "west"})
        c = Client(s, w.url)
        await eventually(lambda: serving(w, c), within=3.0)
        canary_tag = backend_tag(BackendRef("demo", "web", 80, cluster="west"))
        main_tag = backend_tag(BackendRef("demo", "web", 80))
        await eventually(lambda: _canary_active(c, canary_tag), within=3.0)
        sides: dict[str, list[tuple[str, str]]] = {main_tag: [], canary_tag: []}
        for _ in range(40):  # weight 50: both sides issue cookies (same name: sticky)
            pod, line = await c.get()
            value = value_of(line)
            sides[decode_sticky(value).tag].append((pod, value))
        assert sides[main_tag] and sides[canary_tag]
        assert all(pod.startswith("w") for pod, _ in sides[canary_tag])
        # Each client stays on its side and its pod, whatever the weight says; a client
        # pinned to the main line stays there even with the canary header.
        for tag in (main_tag, canary_tag):
            pod, value = sides[tag][0]
            assert {await c.get(value) for _ in range(10)} == {(pod, None)}
        pod, value = sides[main_tag][0]
        assert await c.get(value, headers={"x-canary": "always"}) == (pod, None)
        # The canary's pods go away: its sessions fall back to the main line, re-pinned
        # there with a canary cookie, and stay on that pod.
        await w.remove_pod("w1")
        await w.remove_pod("w2")
        value = sides[canary_tag][0][1]

        async def fell_back() -> bool:
            pod, line = await c.get(value)
            return pod.startswith("e") and line is not None

        await eventually(fell_back, within=3.0)
        pod, line = await c.get(value)
        assert decode_sticky(value_of(line)).tag == canary_tag
        assert {await c.get(value_of(line)) for _ in range(6)} == {(pod, None)}


async def _canary_active(c: Client, tag: str) -> bool:
    _, line = await c.get(headers={"x-canary": "always"})
    return line is not None and decode_sticky(value_of(line)).tag == tag


async def test_scale_up_moves_some_balanced_sessions_and_no_persistent_ones():
    async with world({"east": ["e1"], "west": ["w1"]}) as w, session() as s:
        await w.ingress("p", {**STICKY, NGX + "affinity-mode": "persistent"}, host="p.example.com")
        await w.ingress("b", STICKY, host="b.example.com")
        c = Client(s, w.url)
        for host in ("p.example.com", "b.example.com"):
            await eventually(lambda h=host: _served(c, h), within=3.0)
        sessions: dict[str, list[tuple[str, str]]] = {"p.example.com": [], "b.example.com": []}
        for host, got in sessions.items():
            while sum(1 for pod, _ in got if pod == "e1") < 12:
                pod, line = await c.get(host=host)
                got.append((pod, value_of(line)))
        for name in ("e2", "e3", "e4"):
            await w.add_pod(name, "east")
        await eventually(lambda: _reaches(c, "e4"), within=3.0)
        moved = Counter()
        for host, got in sessions.items():
            for pod, value in got:
                now, line = await c.get(value, host=host)
                if now == pod:
                    assert line is None
                    continue
                assert pod == "e1" and now in ("e2", "e3", "e4")  # only to new pods of e1's cluster
                moved[host] += 1
                assert await c.get(value_of(line), host=host) == (now, None)  # re-pinned
        assert moved["p.example.com"] == 0
        assert moved["b.example.com"] >= 1  # each e1 session moves with p = 3/4


async def _served(c: Client, host: str) -> bool:
    try:
        await c.get(host=host)
        return True
    except AssertionError:
        return False


async def _reaches(c: Client, pod: str) -> bool:
    for _ in range(5):
        if (await c.get(host="p.example.com"))[0] == pod:
            return True
    return False


async def test_upgrade_response_gets_the_cookie_too():
    env = Env()
    try:
        await env.upstream("u1")
        aff = bind_affinity(SessionAffinity(cookie="ws", samesite="Lax"), REF, "/chat")
        await env.start(("*", "/", decision(affinity=aff)))
        async with raw(env.port) as (rd, wr):
            wr.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n")
            resp = await read_response(rd)
        assert resp.status == 101
        assert resp.header("set-cookie").startswith("ws=")
        assert resp.header("set-cookie").endswith("; Path=/chat; HttpOnly; SameSite=Lax")
    finally:
        await env.close()
