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
import json
import logging
import ssl
from collections import deque
from typing import Any

from aiohttp import web

from mcs_controller.access import errors
from mcs_controller.access.api import JSON, ClusterClient
from mcs_controller.access.resources import ALL, Resource
from mcs_controller.access.served_meta import (
    CATEGORIES,
    KUBE_VERSION,
    PATCH_TYPES,
    SHORT_NAMES,
    VERBS,
    bad_request,
    decode_continue,
    encode_continue,
    field_filter,
    find,
    group_versions,
    key,
    served_versions,
    status,
    table,
    wants_table,
)

log = logging.getLogger(__name__)


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
                return status(errors.ApiError("Unauthorized", status=401, reason="Unauthorized"))
        try:
            return await handler(request)
        except _Dropped:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never reaches the client
        except errors.ApiError as exc:
            return status(exc)
        except ValueError as exc:  # bad selectors, bad bodies, bad tokens
            return bad_request(str(exc))
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug here must not look like a network failure
            log.exception("kube API request %s %s failed", request.method, request.path_qs)
            return status(errors.ApiError(f"internal error: {exc}"))

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
                "kind": "APIVersions", "versions": group_versions().get("", []),
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
        for group, versions in group_versions().items():
            if not group:
                continue
            gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
            groups.append({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> web.Response:
        if version not in group_versions().get(group, []):
            raise errors.NotFound("the server could not find the requested resource")
        resources = []
        for res in ALL:
            if res.group != group or version not in served_versions(res):
                continue
            entry = {"name": res.plural, "singularName": res.kind.lower(),
                     "namespaced": res.namespaced, "kind": res.kind, "verbs": VERBS}
            if res.plural in SHORT_NAMES:
                entry["shortNames"] = SHORT_NAMES[res.plural]
            if res.plural in CATEGORIES:
                entry["categories"] = CATEGORIES[res.plural]
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
        if rest[0] == "namespaces" and len(rest) >= 3 and find(group, version, rest[2]):
            namespace, rest = rest[1], rest[2:]
        res = find(group, version, rest[0])
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
            if wants_table(request) and subresource is None:
                obj = table(res, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]})
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
        match = field_filter(request.query.get("fieldSelector"))
        listed = await self._call(
            self.client.list(res, namespace, request.query.get("labelSelector") or None))
        items = sorted((o for o in listed.items if match(o)), key=key)
        rv = listed.resource_version
        token = request.query.get("continue")
        if token:
            rv, after = decode_continue(token)
            items = [o for o in items if key(o) > after]
        meta: JSON = {"resourceVersion": rv}
        limit = int(request.query.get("limit") or 0)
        if 0 < limit < len(items):
            meta["continue"] = encode_continue(rv, key(items[limit - 1]))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if wants_table(request):
            return web.json_response(table(res, items, meta))
        return web.json_response({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                  "metadata": meta, "items": items})

    async def _watch(self, request: web.Request, res: Resource,
                     namespace: str | None) -> web.StreamResponse:
        query = request.query
        match = field_filter(query.get("fieldSelector"))
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true", "True")
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        stream = self.client.watch(res, namespace, query.get("labelSelector") or None,
                                   query.get("resourceVersion") or None, timeout)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        entry = (asyncio.current_task(), request.transport)
        self._watches.add(entry)
        table, headers = wants_table(request), True
        try:
            async for event in stream:
                if event.type == "BOOKMARK" and not bookmarks:
                    continue
                if event.type != "BOOKMARK" and not match(event.object):
                    continue
                obj = event.object
                if table and event.type != "BOOKMARK":
                    obj = table(res, [obj], {"resourceVersion": obj["metadata"].get(
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
        patch_type = PATCH_TYPES.get(content_type)
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
