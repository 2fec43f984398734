"""Any `ClusterClient` served as a Kubernetes API server over HTTP.

The test fixture for `kube.KubeCluster` (a real client over real sockets), and what `up`
offers so that kubectl can be pointed at an embedded cluster. Only the ABC is used, so
the same server fronts the embedded store or, as a pass-through, another client.

Served: the URL layout of the real server (core `/api/v1`, groups `/apis/<g>/<v>`, both
MCS versions), list with labelSelector / fieldSelector (metadata.name, metadata.namespace)
and `limit` + `continue` paging, chunked watch streams (one JSON event per line, BOOKMARKs
when asked for, a too-old resourceVersion as an ERROR event carrying a 410 Status), get /
create / PUT / PATCH (merge and JSON patch) / DELETE (with preconditions), the status
subresource, metav1.Status error bodies, and the discovery documents kubectl reads.
Differences: strategic-merge patches are applied as merge patches; paging does not pin a
snapshot (later pages come from a fresh list, reporting the first page's resourceVersion).
When the backend is `Unreachable`, connections are dropped, as a cut network would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mcs_controller.access import errors
from mcs_controller.access.api import JSON, ClusterClient, PatchType
from mcs_controller.access.resources import ALL, SERVED_VERSIONS, Resource

log = logging.getLogger(__name__)

_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
_SHORT_NAMES = {
    "services": ["svc"], "namespaces": ["ns"], "pods": ["po"], "events": ["ev"],
    "ingresses": ["ing"], "serviceexports": ["svcex"], "serviceimports": ["svcim"],
}
_CATEGORIES = {"services": ["all"], "pods": ["all"]}
_PATCH_TYPES: dict[str, PatchType] = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "merge",  # approximated: lists are replaced
    "application/json-patch+json": "json",
}
KUBE_VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0+amcs", "gitCommit": "",
                "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "gc",
                "platform": "linux/amd64"}


def _versions(res: Resource) -> tuple[str, ...]:
    return SERVED_VERSIONS.get(res.key, (res.version,))


def _find(group: str, version: str, plural: str) -> Resource | None:
    for res in ALL:
        if res.group == group and res.plural == plural and version in _versions(res):
            return res.at_version(version)
    return None


def _group_versions() -> dict[str, list[str]]:
    """Every group (core is "") and its versions, the stored version first (preferred)."""
    out: dict[str, list[str]] = {}
    for res in ALL:
        versions = out.setdefault(res.group, [])
        for v in (res.version, *_versions(res)):
            if v not in versions:
                versions.append(v)
    return out


def _status(exc: errors.ApiError) -> web.Response:
    return web.json_response(exc.as_status(), status=exc.status)


def _bad_request(message: str) -> web.Response:
    return _status(errors.ApiError(message, status=400, reason="BadRequest"))


def _field_filter(selector: str | None) -> Callable[[JSON], bool]:
    """fieldSelector: metadata.name / metadata.namespace with = == != (what kubectl sends)."""
    if not selector:
        return lambda obj: True
    tests: list[tuple[str, str, bool]] = []
    for term in selector.split(","):
        op = next((o for o in ("!=", "==", "=") if o in term), None)
        if op is None:
            raise ValueError(f"invalid field selector term {term!r}")
        field, _, value = term.partition(op)
        negate = op == "!="
        field = field.strip()
        if field not in ("metadata.name", "metadata.namespace"):
            raise ValueError(f'field label not supported: "{field}"')
        tests.append((field.split(".")[1], value.strip(), negate))

    def match(obj: JSON) -> bool:
        meta = obj.get("metadata") or {}
        return all((meta.get(key, "") == value) != negate for key, value, negate in tests)

    return match


def _encode_continue(rv: str, after: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps({"rv": rv, "after": after}).encode()).decode()


def _decode_continue(token: str) -> tuple[str, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(data["rv"]), (str(data["after"][0]), str(data["after"][1]))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError("invalid continue token") from exc


def _key(obj: JSON) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _age(obj: JSON) -> str:
    """kubectl's short AGE ("45s", "12m", "5h", "3d") from creationTimestamp."""
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    try:
        born = time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except (TypeError, ValueError):
        return "<unknown>"
    secs = max(0, int(time.time() - born))
    for limit, unit, size in ((120, "s", 1), (3 * 3600, "m", 60), (48 * 3600, "h", 3600)):
        if secs < limit:
            return f"{secs // size}{unit}"
    return f"{secs // 86400}d"


def _ports(ports: Any) -> str:
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports or []) or "<none>"


#: Extra kubectl columns per kind, between NAME and AGE (server-side printing, as=Table).
_COLUMNS: dict[str, list[tuple[str, Callable[[JSON], Any]]]] = {
    "Service": [
        ("Type", lambda o: o.get("spec", {}).get("type", "ClusterIP")),
        ("Cluster-IP", lambda o: o.get("spec", {}).get("clusterIP", "<none>")),
        ("External-IP", lambda o: ",".join(o.get("spec", {}).get("externalIPs") or [])
         or "<none>"),
        ("Port(s)", lambda o: _ports(o.get("spec", {}).get("ports"))),
    ],
    "ServiceImport": [
        ("Type", lambda o: o.get("spec", {}).get("type", "")),
        ("IP", lambda o: ",".join(o.get("spec", {}).get("ips") or []) or "<none>"),
    ],
    "EndpointSlice": [
        ("AddressType", lambda o: o.get("addressType", "")),
        ("Ports", lambda o: ",".join(str(p.get("port")) for p in o.get("ports") or [])
         or "<unset>"),
        ("Endpoints", lambda o: ",".join(a for e in o.get("endpoints") or []
                                         for a in e.get("addresses") or []) or "<unset>"),
    ],
    "Namespace": [("Status", lambda o: o.get("status", {}).get("phase", ""))],
}


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _table(res: Resource, items: list[JSON], meta: JSON, headers: bool = True) -> JSON:
    """A meta.k8s.io/v1 Table, which kubectl prints as is (its NAMESPACE from the rows)."""
    extra = _COLUMNS.get(res.kind, [])
    columns = [("Name", lambda o: o["metadata"].get("name", "")), *extra, ("Age", _age)]
    rows = [{"cells": [fn(o) for _, fn in columns],
             "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata") or {}}} for o in items]
    defs = [{"name": n, "type": "string", "format": "name" if n == "Name" else "",
             "description": "", "priority": 0} for n, _ in columns] if headers else []
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
            "columnDefinitions": defs, "rows": rows}


class _Dropped(Exception):
    """The backend is unreachable: the connection was cut instead of answering."""


class KubeApiServer:
    """An aiohttp app answering the Kubernetes API for one `ClusterClient`."""

    def __init__(self, client: ClusterClient, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None):
        self.client = client
        self.host = host
        self.port = port
        #: When set, every request must carry `Authorization: Bearer <token>`.
        self.token = token
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._watches: set[tuple[asyncio.Task[Any] | None, asyncio.BaseTransport | None]] = set()
        #: The last requests served ("GET /api/v1/services?limit=3"): what tests look at.
        self.request_log: deque[str] = deque(maxlen=1000)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    def kubeconfig(self, name: str = "amcs") -> JSON:
        """A kubeconfig (as a dict, dump it as YAML) whose current context is this server."""
        user: JSON = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        }

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a watch whose client went away is closed at once.
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=1.0, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the bound one, when asked for port 0

    async def stop(self) -> None:
        """Stop like a dying process: open watch streams are cut, not ended cleanly."""
        for task, transport in list(self._watches):
            if transport is not None:
                transport.abort()
            if task is not None:
                task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- plumbing --------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.request_log.append(f"{request.method} {request.path_qs}")
        if self.token and request.path not in ("/healthz", "/livez", "/readyz"):
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or value.strip() != self.token:
                return _status(errors.ApiError("Unauthorized", status=401, reason="Unauthorized"))
        try:
            return await handler(request)
        except _Dropped:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never reaches the client
        except errors.ApiError as exc:
            return _status(exc)
        except ValueError as exc:  # bad selectors, bad bodies, bad tokens
            return _bad_request(str(exc))
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug here must not look like a network failure
            log.exception("kube API request %s %s failed", request.method, request.path_qs)
            return _status(errors.ApiError(f"internal error: {exc}"))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method != "GET" and len(parts) < 3:
            raise errors.ApiError("method not allowed", status=405, reason="MethodNotAllowed")
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return web.Response(text="ok")
        if parts == ["version"]:
            return web.json_response(KUBE_VERSION)
        if parts == ["api"]:
            return web.json_response({
                "kind": "APIVersions", "versions": _group_versions().get("", []),
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}],
            })
        if parts == ["apis"]:
            return web.json_response(self._group_list())
        if parts[:1] == ["api"] and len(parts) == 2:
            return self._resource_list("", parts[1])
        if parts[:1] == ["apis"] and len(parts) == 3:
            return self._resource_list(parts[1], parts[2])
        if parts[:1] == ["api"]:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.NotFound("the server could not find the requested resource")
        return await self._resource_request(request, group, version, rest)

    # -- discovery ---------------------------------------------------------------------------

    def _group_list(self) -> JSON:
        groups = []
        for group, versions in _group_versions().items():
            if not group:
                continue
            gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
            groups.append({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> web.Response:
        if version not in _group_versions().get(group, []):
            raise errors.NotFound("the server could not find the requested resource")
        resources = []
        for res in ALL:
            if res.group != group or version not in _versions(res):
                continue
            entry = {"name": res.plural, "singularName": res.kind.lower(),
                     "namespaced": res.namespaced, "kind": res.kind, "verbs": _VERBS}
            if res.plural in _SHORT_NAMES:
                entry["shortNames"] = _SHORT_NAMES[res.plural]
            if res.plural in _CATEGORIES:
                entry["categories"] = _CATEGORIES[res.plural]
            resources.append(entry)
            resources.append({"name": f"{res.plural}/status", "singularName": "",
                              "namespaced": res.namespaced, "kind": res.kind,
                              "verbs": ["get", "patch", "update"]})
        group_version = f"{group}/{version}" if group else version
        return web.json_response({"kind": "APIResourceList", "apiVersion": "v1",
                                  "groupVersion": group_version, "resources": resources})

    # -- resources ---------------------------------------------------------------------------

    async def _resource_request(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and _find(group, version, rest[2]):
            namespace, rest = rest[1], rest[2:]
        res = _find(group, version, rest[0])
        if res is None or len(rest) > 3 or (namespace is not None and not res.namespaced):
            raise errors.NotFound("the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if subresource not in (None, "status"):
            raise errors.NotFound(f"{res} has no subresource {subresource!r}")
        if request.query.get("dryRun"):
            raise errors.ApiError("dryRun is not supported here", status=400, reason="BadRequest")
        method = request.method
        if name is None:
            if method == "GET":
                if request.query.get("watch") in ("1", "true", "True"):
                    return await self._watch(request, res, namespace)
                return await self._list(request, res, namespace)
            if method == "POST":
                return await self._create(request, res, namespace)
        elif method == "GET":
            obj = await self._call(self.client.get(res, namespace, name))
            if _wants_table(request) and subresource is None:
                obj = _table(res, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]})
            return web.json_response(obj)
        elif method == "PUT":
            obj = await self._body(request, res, namespace)
            if (obj.get("metadata") or {}).get("name") != name:
                raise ValueError("the name of the object does not match the name on the URL")
            result = await self._call(self.client.replace(res, obj, subresource))
            return web.json_response(result)
        elif method == "PATCH":
            return await self._patch(request, res, namespace, name, subresource)
        elif method == "DELETE" and subresource is None:
            return await self._delete(request, res, namespace, name)
        raise errors.ApiError(f"{method} is not allowed here", status=405,
                              reason="MethodNotAllowed")

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except errors.Unreachable as exc:
            raise _Dropped() from exc

    async def _body(self, request: web.Request, res: Resource, namespace: str | None) -> JSON:
        try:
            obj = json.loads(await request.read())
        except ValueError as exc:
            raise ValueError(f"invalid JSON body: {exc}") from exc
        if not isinstance(obj, dict):
            raise ValueError("the body must be a JSON object")
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        if obj["kind"] != res.kind:
            raise ValueError(f"kind {obj['kind']!r} does not match {res.kind!r} on the URL")
        meta = obj.setdefault("metadata", {})
        if namespace is not None:
            if meta.setdefault("namespace", namespace) != namespace:
                raise ValueError("the namespace of the provided object does not match "
                                 "the namespace sent on the request")
        return obj

    async def _list(self, request: web.Request, res: Resource,
                    namespace: str | None) -> web.Response:
        match = _field_filter(request.query.get("fieldSelector"))
        listed = await self._call(
            self.client.list(res, namespace, request.query.get("labelSelector") or None))
        items = sorted((o for o in listed.items if match(o)), key=_key)
        rv = listed.resource_version
        token = request.query.get("continue")
        if token:
            rv, after = _decode_continue(token)
            items = [o for o in items if _key(o) > after]
        meta: JSON = {"resourceVersion": rv}
        limit = int(request.query.get("limit") or 0)
        if 0 < limit < len(items):
            meta["continue"] = _encode_continue(rv, _key(items[limit - 1]))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if _wants_table(request):
            return web.json_response(_table(res, items, meta))
        return web.json_response({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                  "metadata": meta, "items": items})

    async def _watch(self, request: web.Request, res: Resource,
                     namespace: str | None) -> web.StreamResponse:
        query = request.query
        match = _field_filter(query.get("fieldSelector"))
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true", "True")
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        stream = self.client.watch(res, namespace, query.get("labelSelector") or None,
                                   query.get("resourceVersion") or None, timeout)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        entry = (asyncio.current_task(), request.transport)
        self._watches.add(entry)
        table, headers = _wants_table(request), True
        try:
            async for event in stream:
                if event.type == "BOOKMARK" and not bookmarks:
                    continue
                if event.type != "BOOKMARK" and not match(event.object):
                    continue
                obj = event.object
                if table and event.type != "BOOKMARK":
                    obj = _table(res, [obj], {"resourceVersion": obj["metadata"].get(
                        "resourceVersion", "")}, headers)
                    headers = False
                line = json.dumps({"type": event.type, "object": obj}) + "\n"
                await resp.write(line.encode())  # written through, one chunk per event
        except errors.Unreachable:
            if request.transport is not None:
                request.transport.abort()
            return resp
        except (errors.ApiError, ValueError) as exc:  # Gone: the real server's 200 + ERROR
            if not isinstance(exc, errors.ApiError):
                exc = errors.ApiError(str(exc), status=400, reason="BadRequest")
            line = json.dumps({"type": "ERROR", "object": exc.as_status()}) + "\n"
            try:
                await resp.write(line.encode())
            except ConnectionError:
                return resp
        except ConnectionError:
            return resp  # the client went away
        finally:
            self._watches.discard(entry)
            await stream.aclose()  # type: ignore[attr-defined]
        try:
            await resp.write_eof()
        except ConnectionError:
            pass  # the client stopped listening first (its own deadline)
        return resp

    async def _create(self, request: web.Request, res: Resource,
                      namespace: str | None) -> web.Response:
        obj = await self._body(request, res, namespace)
        return web.json_response(await self._call(self.client.create(res, obj)), status=201)

    async def _patch(self, request: web.Request, res: Resource, namespace: str | None,
                     name: str, subresource: str | None) -> web.Response:
        content_type = request.content_type
        patch_type = _PATCH_TYPES.get(content_type)
        if patch_type is None:
            raise errors.ApiError(f"the patch type {content_type!r} is not supported",
                                  status=415, reason="UnsupportedMediaType")
        try:
            patch = json.loads(await request.read())
        except ValueError as exc:
            raise ValueError(f"invalid JSON patch: {exc}") from exc
        result = await self._call(
            self.client.patch(res, namespace, name, patch, patch_type, subresource))
        return web.json_response(result)

    async def _delete(self, request: web.Request, res: Resource, namespace: str | None,
                      name: str) -> web.Response:
        options: Any = {}
        raw = await request.read()
        if raw.strip():
            try:
                options = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"invalid DeleteOptions: {exc}") from exc
        rv = ((options or {}).get("preconditions") or {}).get("resourceVersion")
        await self._call(self.client.delete(res, namespace, name, rv))
        return web.json_response({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": res.group, "kind": res.plural},
        })


async def serve_cluster(client: ClusterClient, host: str = "127.0.0.1", port: int = 0, *,
                        token: str | None = None,
                        ssl_context: ssl.SSLContext | None = None) -> KubeApiServer:
    """Start serving `client`; `port=0` binds a free port (read it from `.port`)."""
    server = KubeApiServer(client, host, port, token=token, ssl_context=ssl_context)
    await server.start()
    return server
