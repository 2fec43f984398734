"""KubeCluster, the real-API-server client, over real sockets against served.py.

served.py fronts an EmbeddedCluster, so every test checks two things at once: that the
client speaks the Kubernetes wire protocol, and that the server speaks it back.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest
import yaml
from netkit import refusing_port

from mcs_controller.access import errors
from mcs_controller.access.embedded import EmbeddedCluster
from mcs_controller.access.informer import Informer
from mcs_controller.access.kube import (
    KubeCluster,
    KubeConfigError,
    KubeConnection,
    load_incluster,
    load_kubeconfig,
)
from mcs_controller.access.resources import NAMESPACES, SERVICE_EXPORTS, SERVICES
from mcs_controller.access.served import serve_cluster

pytest_plugins = ["kubeapi_fixture"]


def svc(name: str, ns: str = "default", labels: dict | None = None) -> dict:
    meta: dict = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {"metadata": meta, "spec": {"ports": [{"port": 80}]}}


async def next_event(stream, wait: float = 2.0):
    return await asyncio.wait_for(stream.__anext__(), wait)


def names(items: list[dict]) -> list[str]:
    return [o["metadata"]["name"] for o in items]


# -- list -------------------------------------------------------------------------------


async def test_list_pages_through_continue_tokens(kubeapi_factory):
    api = await kubeapi_factory(page_size=3)
    for i in range(8):
        await api.embedded.create(SERVICES, svc(f"s{i}"))
    listed = await api.client.list(SERVICES, "default")
    assert names(listed.items) == [f"s{i}" for i in range(8)]
    assert all(o["apiVersion"] == "v1" and o["kind"] == "Service" for o in listed.items)
    assert listed.resource_version == str(api.embedded.resource_version)
    pages = [r for r in api.server.request_log if r.startswith("GET /api/v1/namespaces/default/")]
    assert len(pages) == 3 and "limit=3" in pages[0] and "continue=" in pages[1]


async def test_server_pages_like_the_real_one(kubeapi_factory):
    api = await kubeapi_factory()
    for i in range(5):
        await api.embedded.create(SERVICES, svc(f"s{i}"))
    async with aiohttp.ClientSession() as http:
        url = f"{api.server.url}/api/v1/namespaces/default/services"
        async with http.get(url, params={"limit": "2"}) as resp:
            first = await resp.json()
        assert first["kind"] == "ServiceList" and names(first["items"]) == ["s0", "s1"]
        assert first["metadata"]["remainingItemCount"] == 3
        await api.embedded.create(SERVICES, svc("s9"))  # later pages keep the first page's rv
        params = {"limit": "2", "continue": first["metadata"]["continue"]}
        async with http.get(url, params=params) as resp:
            second = await resp.json()
        assert names(second["items"]) == ["s2", "s3"]
        assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        async with http.get(url, params={"continue": "garbage"}) as resp:
            assert resp.status == 400


async def test_list_all_namespaces_label_selector_and_cluster_scope(kubeapi):
    embedded, client = kubeapi
    await embedded.create(NAMESPACES, {"metadata": {"name": "other"}})
    await embedded.create(SERVICES, svc("a", labels={"app": "web", "tier": "front"}))
    await embedded.create(SERVICES, svc("b", labels={"app": "db"}))
    await embedded.create(SERVICES, svc("c", "other", labels={"app": "web"}))
    everywhere = await client.list(SERVICES)
    assert sorted(names(everywhere.items)) == ["a", "b", "c"]
    web = await client.list(SERVICES, label_selector="app=web")
    assert sorted(names(web.items)) == ["a", "c"]
    assert names((await client.list(SERVICES, "default", "app in (web,db),!tier")).items) == ["b"]
    assert names((await client.list(SERVICES, "other")).items) == ["c"]
    namespaces = await client.list(NAMESPACES)
    assert {"default", "kube-system", "other"} <= set(names(namespaces.items))
    assert namespaces.items[0]["kind"] == "Namespace"
    with pytest.raises(errors.ApiError) as bad:
        await client.list(SERVICES, label_selector="app in (")
    assert bad.value.status == 400


# -- get / create / replace / patch / delete -----------------------------------------------


async def test_get_create_and_their_errors(kubeapi):
    embedded, client = kubeapi
    created = await client.create(SERVICES, svc("web"))
    assert created["spec"]["clusterIP"] and created["metadata"]["resourceVersion"]
    got = await client.get(SERVICES, "default", "web")
    assert got == created
    with pytest.raises(errors.AlreadyExists):
        await client.create(SERVICES, svc("web"))
    with pytest.raises(errors.NotFound):
        await client.get(SERVICES, "default", "missing")
    with pytest.raises(errors.NotFound):  # namespaces must exist, as on a real server
        await client.create(SERVICES, svc("web", "nowhere"))
    with pytest.raises(errors.Invalid):
        await client.create(SERVICES, svc("Not_A_Name"))
    generated = await client.create(
        SERVICES, {"metadata": {"generateName": "gen-"}, "spec": {"ports": [{"port": 1}]}})
    assert generated["metadata"]["name"].startswith("gen-")
    assert generated["metadata"]["namespace"] == "default"
    assert (await embedded.get(SERVICES, "default", generated["metadata"]["name"]))


async def test_replace_conflicts_on_a_stale_resource_version(kubeapi):
    _, client = kubeapi
    first = await client.create(SERVICES, svc("web"))
    first["metadata"]["labels"] = {"v": "1"}
    second = await client.replace(SERVICES, first)
    assert second["metadata"]["labels"] == {"v": "1"}
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    first["metadata"]["labels"] = {"v": "stale"}
    with pytest.raises(errors.Conflict) as conflict:
        await client.replace(SERVICES, first)
    assert not isinstance(conflict.value, errors.AlreadyExists)
    assert (await client.get(SERVICES, "default", "web"))["metadata"]["labels"] == {"v": "1"}


async def test_merge_and_json_patch(kubeapi):
    _, client = kubeapi
    await client.create(SERVICES, svc("web", labels={"a": "1", "b": "2"}))
    merged = await client.patch(SERVICES, "default", "web",
                                {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert merged["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert merged["kind"] == "Service"
    patched = await client.patch(SERVICES, "default", "web", [
        {"op": "test", "path": "/metadata/labels/b", "value": "2"},
        {"op": "replace", "path": "/spec/ports/0/port", "value": 8080},
    ], patch_type="json")
    assert patched["spec"]["ports"][0]["port"] == 8080
    with pytest.raises(errors.Invalid):
        await client.patch(SERVICES, "default", "web",
                           [{"op": "test", "path": "/metadata/labels/b", "value": "nope"}],
                           patch_type="json")
    with pytest.raises(errors.NotFound):
        await client.patch(SERVICES, "default", "missing", {"metadata": {"labels": {}}})


async def test_status_subresource(kubeapi):
    _, client = kubeapi
    created = await client.create(SERVICE_EXPORTS, {"metadata": {"name": "web"}})
    cond = {"type": "Valid", "status": "True", "reason": "ServiceFound", "message": "",
            "lastTransitionTime": "2024-01-01T00:00:00Z"}
    created["status"] = {"conditions": [cond]}
    updated = await client.replace(SERVICE_EXPORTS, created, subresource="status")
    assert updated["status"]["conditions"][0]["type"] == "Valid"
    # The main resource ignores status; the subresource ignores everything else.
    updated["status"] = {"conditions": []}
    updated["metadata"]["labels"] = {"x": "y"}
    main = await client.replace(SERVICE_EXPORTS, updated)
    assert main["status"]["conditions"][0]["type"] == "Valid" and main["metadata"]["labels"]
    cond2 = {**cond, "type": "Ready"}
    via_patch = await client.patch(SERVICE_EXPORTS, "default", "web",
                                   {"status": {"conditions": [cond2]}}, subresource="status")
    assert [c["type"] for c in via_patch["status"]["conditions"]] == ["Ready"]


async def test_delete_with_precondition(kubeapi):
    _, client = kubeapi
    created = await client.create(SERVICES, svc("web"))
    await client.patch(SERVICES, "default", "web", {"metadata": {"labels": {"x": "y"}}})
    with pytest.raises(errors.Conflict):
        await client.delete(SERVICES, "default", "web", created["metadata"]["resourceVersion"])
    current = await client.get(SERVICES, "default", "web")
    await client.delete(SERVICES, "default", "web", current["metadata"]["resourceVersion"])
    with pytest.raises(errors.NotFound):
        await client.delete(SERVICES, "default", "web")


async def test_both_mcs_versions_are_served(kubeapi):
    _, client = kubeapi
    beta = SERVICE_EXPORTS.at_version("v1beta1")
    created = await client.create(beta, {"metadata": {"name": "web"}})
    assert created["apiVersion"] == "multicluster.x-k8s.io/v1beta1"
    alpha = await client.get(SERVICE_EXPORTS, "default", "web")
    assert alpha["apiVersion"] == "multicluster.x-k8s.io/v1alpha1"
    assert alpha["metadata"]["uid"] == created["metadata"]["uid"]


# -- watch ----------------------------------------------------------------------------------


async def test_watch_streams_events_and_resumes_from_a_resource_version(kubeapi):
    embedded, client = kubeapi
    await client.create(SERVICES, svc("old"))
    start = (await client.list(SERVICES, "default")).resource_version
    stream = client.watch(SERVICES, "default", resource_version=start)
    await client.create(SERVICES, svc("web"))
    added = await next_event(stream)
    assert (added.type, added.object["metadata"]["name"]) == ("ADDED", "web")
    assert added.object["kind"] == "Service" and added.object["spec"]["clusterIP"]
    await client.patch(SERVICES, "default", "web", {"metadata": {"labels": {"x": "y"}}})
    modified = await next_event(stream)
    assert modified.type == "MODIFIED" and modified.object["metadata"]["labels"] == {"x": "y"}
    await client.delete(SERVICES, "default", "web")
    deleted = await next_event(stream)
    assert deleted.type == "DELETED"
    await stream.aclose()
    # Resume from the ADDED event's resourceVersion: only what came after it.
    resumed = client.watch(SERVICES, "default",
                           resource_version=added.object["metadata"]["resourceVersion"])
    assert [(await next_event(resumed)).type for _ in range(2)] == ["MODIFIED", "DELETED"]
    await resumed.aclose()
    # No resourceVersion: the current state first, as synthetic ADDED events.
    fresh = client.watch(SERVICES, "default")
    first = await next_event(fresh)
    assert (first.type, first.object["metadata"]["name"]) == ("ADDED", "old")
    await fresh.aclose()


async def test_closing_a_watch_releases_it_on_the_server(kubeapi):
    embedded, client = kubeapi
    stream = client.watch(SERVICES)
    await client.create(SERVICES, svc("web"))
    assert (await next_event(stream)).type == "ADDED"
    assert len(embedded._watchers) == 1
    await stream.aclose()
    for _ in range(100):
        if not embedded._watchers:
            break
        await asyncio.sleep(0.01)
    assert not embedded._watchers


async def test_watch_with_label_selector(kubeapi):
    _, client = kubeapi
    rv = (await client.list(SERVICES)).resource_version
    stream = client.watch(SERVICES, label_selector="app=web", resource_version=rv)
    await client.create(SERVICES, svc("db", labels={"app": "db"}))
    await client.create(SERVICES, svc("web", labels={"app": "web"}))
    event = await next_event(stream)
    assert (event.type, event.object["metadata"]["name"]) == ("ADDED", "web")
    await stream.aclose()


async def test_watch_from_a_compacted_version_raises_gone(kubeapi_factory):
    api = await kubeapi_factory(history=3)
    first = await api.client.create(SERVICES, svc("a"))
    for i in range(5):
        await api.client.patch(SERVICES, "default", "a", {"metadata": {"labels": {"i": str(i)}}})
    with pytest.raises(errors.Gone):
        async for _ in api.client.watch(SERVICES, "default",
                                        resource_version=first["metadata"]["resourceVersion"]):
            pass
    # On the wire: HTTP 200 and an ERROR event carrying a 410 Status, as kube-apiserver does.
    async with aiohttp.ClientSession() as http:
        params = {"watch": "1", "resourceVersion": first["metadata"]["resourceVersion"]}
        async with http.get(f"{api.server.url}/api/v1/services", params=params) as resp:
            assert resp.status == 200
            line = json.loads(await resp.content.readline())
    assert line["type"] == "ERROR" and line["object"]["code"] == 410
    assert line["object"]["kind"] == "Status" and line["object"]["reason"] == "Expired"


async def test_watch_bookmarks_and_timeout(kubeapi_factory):
    api = await kubeapi_factory(bookmark_interval=0.05)
    rv = (await api.client.list(SERVICES)).resource_version
    events = [e async for e in api.client.watch(SERVICES, resource_version=rv,
                                                 timeout_seconds=0.4)]
    assert events and all(e.type == "BOOKMARK" for e in events)
    assert events[-1].object["metadata"]["resourceVersion"] == rv
    assert events[-1].object["kind"] == "Service"
    # A server only sends bookmarks to clients that asked for them.
    async with aiohttp.ClientSession() as http:
        params = {"watch": "true", "resourceVersion": rv}
        async with http.get(f"{api.server.url}/api/v1/services", params=params) as resp:
            assert resp.status == 200
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(resp.content.readany(), 0.3)


async def test_watch_timeout_ends_cleanly_with_events(kubeapi):
    _, client = kubeapi
    rv = (await client.list(SERVICES)).resource_version
    await client.create(SERVICES, svc("web"))
    loop = asyncio.get_running_loop()
    began = loop.time()
    events = [e async for e in client.watch(SERVICES, resource_version=rv, timeout_seconds=0.3)]
    assert [e.type for e in events] == ["ADDED"]
    assert 0.25 < loop.time() - began < 1.5


# -- failures ---------------------------------------------------------------------------------


async def test_unreachable_when_nothing_listens():
    client = KubeCluster("gone", KubeConnection.for_server(f"http://127.0.0.1:{refusing_port()}"))
    try:
        with pytest.raises(errors.Unreachable, match="gone"):
            await client.list(SERVICES)
        with pytest.raises(errors.Unreachable):
            await client.get(SERVICES, "default", "x")
        with pytest.raises(errors.Unreachable):
            async for _ in client.watch(SERVICES):
                pass
    finally:
        await client.close()


async def test_unreachable_mid_watch_when_the_server_stops(kubeapi_factory):
    api = await kubeapi_factory()
    rv = (await api.client.list(SERVICES)).resource_version
    stream = api.client.watch(SERVICES, resource_version=rv)
    await api.client.create(SERVICES, svc("web"))
    assert (await next_event(stream)).type == "ADDED"
    await api.server.stop()
    with pytest.raises(errors.Unreachable):
        await next_event(stream)
    with pytest.raises(errors.Unreachable):
        await api.client.list(SERVICES)


async def test_embedded_outage_looks_like_a_network_failure(kubeapi):
    embedded, client = kubeapi
    rv = (await client.list(SERVICES)).resource_version
    stream = client.watch(SERVICES, resource_version=rv)
    await client.create(SERVICES, svc("web"))
    assert (await next_event(stream)).type == "ADDED"
    embedded.set_reachable(False)
    with pytest.raises(errors.Unreachable):
        await next_event(stream)
    with pytest.raises(errors.Unreachable):
        await client.get(SERVICES, "default", "web")
    embedded.set_reachable(True)
    assert (await client.get(SERVICES, "default", "web"))["metadata"]["name"] == "web"


async def test_request_timeout_is_unreachable():
    async def hang(request):
        await asyncio.sleep(5)

    app = aiohttp.web.Application()
    app.router.add_get("/{tail:.*}", hang)
    runner = aiohttp.web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = KubeCluster("slow", KubeConnection.for_server(f"http://127.0.0.1:{port}"),
                         request_timeout=0.2)
    try:
        with pytest.raises(errors.Unreachable):
            await client.get(SERVICES, "default", "x")
    finally:
        await client.close()
        await runner.cleanup()


# -- configuration and authentication ------------------------------------------------------


async def test_bearer_token_from_kubeconfig(kubeapi_factory, tmp_path: Path):
    api = await kubeapi_factory(token="s3cret")
    assert (await api.client.create(SERVICES, svc("web")))["metadata"]["name"] == "web"
    anonymous = KubeCluster("c1", load_kubeconfig(
        str(api.write_kubeconfig(tmp_path / "anon", token=""))))
    wrong = KubeCluster("c1", load_kubeconfig(
        str(api.write_kubeconfig(tmp_path / "wrong", token="nope"))))
    try:
        for client in (anonymous, wrong):
            with pytest.raises(errors.ApiError) as refused:
                await client.list(SERVICES)
            assert refused.value.status == 401 and refused.value.reason == "Unauthorized"
            with pytest.raises(errors.ApiError) as refused_watch:
                async for _ in client.watch(SERVICES):
                    pass
            assert refused_watch.value.status == 401
    finally:
        await anonymous.close()
        await wrong.close()


async def test_rotated_token_file_is_reread_on_401(kubeapi_factory, tmp_path: Path):
    api = await kubeapi_factory(token="one")
    token_file = tmp_path / "token"
    token_file.write_text("one")
    config = api.server.kubeconfig()
    config["users"][0]["user"] = {"tokenFile": str(token_file)}
    path = tmp_path / "kubeconfig-tokenfile"
    path.write_text(yaml.safe_dump(config))
    client = KubeCluster("c1", load_kubeconfig(str(path)))
    try:
        await client.list(SERVICES)
        api.server.token = "two"  # the server now wants a new token ...
        token_file.write_text("two")  # ... which the kubelet has just written
        assert (await client.list(SERVICES)).items == []
        assert sum("GET /api/v1/services" in r for r in api.server.request_log) == 3
    finally:
        await client.close()


def test_load_kubeconfig_context_namespace_and_errors(tmp_path: Path):
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "one",
        "clusters": [{"name": "a", "cluster": {"server": "http://127.0.0.1:1/"}},
                     {"name": "b", "cluster": {"server": "https://10.0.0.2:6443",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "abc"}}],
        "contexts": [{"name": "one", "context": {"cluster": "a", "user": "u"}},
                     {"name": "two", "context": {"cluster": "b", "user": "u",
                                                 "namespace": "team"}}],
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    one = load_kubeconfig(str(path))
    assert (one.server, one.namespace, one.context) == ("http://127.0.0.1:1", "default", "one")
    assert one.ssl_context() is None
    two = load_kubeconfig(str(path), "two")
    assert (two.server, two.namespace, two.verify_ssl) == ("https://10.0.0.2:6443", "team", False)
    assert two.ssl_context() is not None
    assert asyncio.run(two.authorization()) == "Bearer abc"
    with pytest.raises(KubeConfigError):
        load_kubeconfig(str(path), "three")
    with pytest.raises(KubeConfigError):
        load_kubeconfig(str(tmp_path / "missing"))


def test_load_incluster(tmp_path: Path):
    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "ca.crt").write_text("not checked until a TLS handshake")
    (tmp_path / "namespace").write_text("amcs-system\n")
    conn = load_incluster(
        token_file=str(tmp_path / "token"), ca_file=str(tmp_path / "ca.crt"),
        namespace_file=str(tmp_path / "namespace"),
        environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert (conn.server, conn.namespace) == ("https://10.96.0.1:443", "amcs-system")
    assert conn.ca_file == str(tmp_path / "ca.crt")
    assert asyncio.run(conn.authorization()) == "bearer pod-token"
    with pytest.raises(KubeConfigError):
        load_incluster(token_file=str(tmp_path / "token"), ca_file=str(tmp_path / "ca.crt"),
                       environ={})


# -- what kubectl needs ----------------------------------------------------------------------


async def test_discovery_documents(kubeapi_factory):
    api = await kubeapi_factory()
    async with aiohttp.ClientSession() as http:
        async def get(path: str) -> dict:
            async with http.get(api.server.url + path) as resp:
                assert resp.status == 200, path
                return await resp.json()

        assert (await get("/version"))["major"] == "1"
        assert (await get("/api"))["versions"] == ["v1"]
        groups = {g["name"]: g for g in (await get("/apis"))["groups"]}
        mcs = groups["multicluster.x-k8s.io"]
        assert [v["version"] for v in mcs["versions"]] == ["v1alpha1", "v1beta1"]
        assert mcs["preferredVersion"]["version"] == "v1alpha1"
        core = {r["name"]: r for r in (await get("/api/v1"))["resources"]}
        assert core["services"]["shortNames"] == ["svc"] and core["services"]["namespaced"]
        assert "services/status" in core and not core["namespaces"]["namespaced"]
        beta = await get("/apis/multicluster.x-k8s.io/v1beta1")
        assert {r["name"] for r in beta["resources"]} >= {"serviceexports", "serviceimports"}
        async with http.get(api.server.url + "/apis/nope/v1") as resp:
            assert resp.status == 404 and (await resp.json())["kind"] == "Status"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
async def test_kubectl_get_services_in_all_namespaces(kubeapi_factory, tmp_path: Path):
    api = await kubeapi_factory()
    await api.embedded.create(SERVICES, svc("web"))
    await api.embedded.create(SERVICES, svc("dns", "kube-system"))
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(api.kubeconfig), "--cache-dir", str(tmp_path / "cache"),
        "get", "svc", "-A", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    header, *rows = [line.split() for line in out.decode().splitlines()]
    assert header == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert [row[:3] for row in rows] == [["default", "web", "ClusterIP"],
                                         ["kube-system", "dns", "ClusterIP"]]



# -- a second, independent server: kmock (the kopf author's Kubernetes mock) ---------------


async def test_against_kmock_emulator():
    kmock = pytest.importorskip("kmock")
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        emulator.resources["v1/services"].kind = "Service"
        client = KubeCluster("km", KubeConnection.for_server(str(emulator.url).rstrip("/")))
        try:
            created = await client.create(SERVICES, svc("web"))
            assert created["metadata"]["name"] == "web" and created["kind"] == "Service"
            assert (await client.get(SERVICES, "default", "web"))["spec"] == created["spec"]
            assert names((await client.list(SERVICES)).items) == ["web"]
            stream = client.watch(SERVICES, "default")
            assert (await next_event(stream)).type == "ADDED"
            await client.patch(SERVICES, "default", "web", {"metadata": {"labels": {"a": "b"}}})
            modified = await next_event(stream)
            assert modified.type == "MODIFIED" and modified.object["metadata"]["labels"]
            await client.delete(SERVICES, "default", "web")
            assert (await next_event(stream)).type == "DELETED"
            await stream.aclose()
            with pytest.raises(errors.NotFound):
                await client.get(SERVICES, "default", "web")
        finally:
            await client.close()


async def test_kmock_scripted_stream_bookmark_then_410():
    kmock = pytest.importorskip("kmock")
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        emulator.resources["v1/services"].kind = "Service"
        emulator["watch v1/services"] << (
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}},
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                         "message": "too old resource version: 5 (7)"}},
        )
        client = KubeCluster("km", KubeConnection.for_server(str(emulator.url).rstrip("/")))
        seen = []
        try:
            with pytest.raises(errors.Gone, match="too old"):
                async for event in client.watch(SERVICES, resource_version="5"):
                    seen.append(event)
        finally:
            await client.close()
        assert [(e.type, e.object["metadata"]["resourceVersion"]) for e in seen] == [
            ("BOOKMARK", "7")]
        params = emulator[kmock.action.WATCH][0].params
        assert params["resourceVersion"] == "5" and params["allowWatchBookmarks"] == "true"


# -- TLS: CA verification, client certificates, in-cluster service-account files -------------


def _issue_certs(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1 and a client cert, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def make(cn: str, issuer=None, *, ca: bool = False, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (x509.CertificateBuilder().subject_name(name)
                   .issuer_name(issuer[0].subject if issuer else name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
        return cert, key

    ca = make("amcs-test-ca", ca=True)
    server = make("127.0.0.1", ca, san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = make("amcs-controller", ca)
    out = {}
    for label, (cert, key) in {"ca": ca, "server": server, "client": client}.items():
        out[f"{label}.crt"] = tmp_path / f"{label}.crt"
        out[f"{label}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{label}.key"] = tmp_path / f"{label}.key"
        out[f"{label}.key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return out


async def test_tls_with_ca_and_client_certificates_from_kubeconfig(tmp_path: Path):
    certs = _issue_certs(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs["ca.crt"])
    server_ctx.load_cert_chain(certs["server.crt"], certs["server.key"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    embedded = EmbeddedCluster("tls")
    server = await serve_cluster(embedded, ssl_context=server_ctx)

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    config = server.kubeconfig()
    config["clusters"][0]["cluster"]["certificate-authority-data"] = b64(certs["ca.crt"])
    config["users"][0]["user"] = {"client-certificate": str(certs["client.crt"]),
                                  "client-key-data": b64(certs["client.key"])}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    client = KubeCluster("tls", load_kubeconfig(str(path)))
    no_cert = KubeCluster("tls", KubeConnection.for_server(server.url, ca_file=str(certs["ca.crt"])))
    no_ca = KubeCluster("tls", KubeConnection.for_server(server.url))
    try:
        await client.create(SERVICES, svc("web"))
        assert names((await client.list(SERVICES)).items) == ["web"]
        stream = client.watch(SERVICES)
        assert (await next_event(stream)).type == "ADDED"
        await stream.aclose()
        for refused in (no_cert, no_ca):  # the handshake fails: no answer at all
            with pytest.raises(errors.Unreachable):
                await refused.list(SERVICES)
    finally:
        for c in (client, no_cert, no_ca):
            await c.close()
        await server.stop()


async def test_incluster_over_tls_rereads_a_rotated_token(tmp_path: Path):
    certs = _issue_certs(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs["server.crt"], certs["server.key"])
    server = await serve_cluster(EmbeddedCluster("pod"), token="first", ssl_context=server_ctx)
    token = tmp_path / "token"
    token.write_text("first")
    conn = load_incluster(
        token_file=str(token), ca_file=str(certs["ca.crt"]),
        namespace_file=str(tmp_path / "absent"),
        environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                 "KUBERNETES_SERVICE_PORT": str(server.port)})
    client = KubeCluster("pod", conn)
    try:
        assert conn.namespace == "default"
        assert "default" in names((await client.list(NAMESPACES)).items)
        server.token = "second"
        token.write_text("second")  # the kubelet rotated the projected token
        assert (await client.get(NAMESPACES, None, "default"))["kind"] == "Namespace"
    finally:
        await client.close()
        await server.stop()


# -- the informer on top, over the wire ---------------------------------------------------------


async def wait_until(predicate, wait: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_informer_over_the_wire_survives_a_server_restart(kubeapi_factory):
    api = await kubeapi_factory()
    informer = Informer(api.client, SERVICES, backoff_initial=0.05, backoff_max=0.1)
    informer.start()
    try:
        await asyncio.wait_for(informer.synced.wait(), 2)
        await api.embedded.create(SERVICES, svc("a"))
        await wait_until(lambda: informer.get("default", "a") is not None)
        port = api.server.port
        await api.server.stop()
        await wait_until(lambda: not informer.reachable)
        await api.embedded.create(SERVICES, svc("b"))  # changed while unreachable
        api.server = await serve_cluster(api.embedded, port=port)
        await wait_until(lambda: informer.reachable and informer.get("default", "b") is not None)
        await api.embedded.delete(SERVICES, "default", "a")
        await wait_until(lambda: informer.get("default", "a") is None)
    finally:
        await informer.stop()
