"""`ClusterClient` over a real Kubernetes API server, async end to end (aiohttp, as kopf does).

Every call is one HTTP request; a watch is one streaming GET whose newline-delimited JSON
is parsed as bytes arrive, so a long-lived watch never blocks the event loop nor holds a
whole body. Failures come back as the typed errors of `errors`: the server's answers via
`from_status`, and anything that kept us from getting an answer as `Unreachable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp

from mcs_controller.access import errors
from mcs_controller.access.api import JSON, ClusterClient, ObjectList, PatchType, WatchEvent
from mcs_controller.access.kube.config import KubeConnection
from mcs_controller.access.resources import Resource

_PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}
_WATCH_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})
#: What "could not get an answer" looks like from aiohttp and the socket layer.
_NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def resource_path(
    res: Resource, namespace: str | None = None, name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The API path: /api/v1/... for the core group, /apis/<group>/<version>/... otherwise."""
    path = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
    if res.namespaced and namespace is not None:
        path += f"/namespaces/{namespace}"
    path += f"/{res.plural}"
    if name is not None:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def _fill_type(res: Resource, obj: JSON) -> JSON:
    """List items (and some events) come without apiVersion/kind; callers want them."""
    obj.setdefault("apiVersion", res.api_version)
    obj.setdefault("kind", res.kind)
    return obj


def _parse_body(body: bytes) -> JSON | None:
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


class KubeCluster(ClusterClient):
    """One real cluster, reached through a `KubeConnection` (kubeconfig or in-cluster)."""

    def __init__(
        self,
        name: str,
        connection: KubeConnection,
        *,
        request_timeout: float = 30.0,
        page_size: int = 500,
    ):
        self.name = name
        self.connection = connection
        self.request_timeout = request_timeout
        self.page_size = page_size
        self._session: aiohttp.ClientSession | None = None
        self._tls_identity: tuple[Any, ...] | None = None

    # -- plumbing --------------------------------------------------------------------------

    async def _get_session(self) -> aiohttp.ClientSession:
        """One pooled session, created in the running loop; rebuilt if TLS material changed."""
        identity = self.connection.tls_identity
        if self._session is not None and not self._session.closed:
            if identity == self._tls_identity:
                return self._session
            await self._session.close()
        ctx = self.connection.ssl_context()
        connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"Accept": "application/json", "User-Agent": "amcs/0.1"},
        )
        self._tls_identity = identity
        return self._session

    @contextlib.contextmanager
    def _network(self, what: str) -> Iterator[None]:
        try:
            yield
        except _NETWORK_ERRORS as exc:
            detail = str(exc) or type(exc).__name__
            raise errors.Unreachable(f"cluster {self.name}: {what}: {detail}") from exc

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """Send; a 2xx response is returned unread, anything else raised as its typed error.

        A 401 triggers one credential reload (exec plugin, rotated token file) and a retry.
        """
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(2):
            session = await self._get_session()
            headers = {"Content-Type": content_type} if data is not None else {}
            auth = await self.connection.authorization()
            if auth:
                headers["Authorization"] = auth
            resp = await session.request(
                method,
                self.connection.server + path,
                params=params,
                data=data,
                headers=headers,
                timeout=client_timeout or aiohttp.ClientTimeout(total=self.request_timeout),
                proxy=self.connection.proxy,
                server_hostname=self.connection.tls_server_name,
            )
            if resp.status < 300:
                return resp
            async with resp:
                raw = await resp.read()
            if resp.status == 401 and attempt == 0 and await self._refreshed():
                continue
            raise errors.from_status(resp.status, _parse_body(raw))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _refreshed(self) -> bool:
        """Reload credentials after a 401; a failing loader just leaves the 401 standing."""
        try:
            return await self.connection.refresh()
        except Exception:  # an exec plugin can fail in any way
            return False

    async def _call(self, method: str, path: str, **kwargs: Any) -> JSON:
        with self._network(f"{method} {path}"):
            resp = await self._send(method, path, **kwargs)
            async with resp:
                raw = await resp.read()
        return _parse_body(raw) or {}

    # -- reads -----------------------------------------------------------------------------

    async def list(
        self, res: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> ObjectList:
        path = resource_path(res, namespace)
        base: dict[str, str] = {"labelSelector": label_selector} if label_selector else {}
        items: list[JSON] = []
        token: str | None = None
        while True:
            params = {**base, "limit": str(self.page_size)}
            if token:
                params["continue"] = token
            try:
                page = await self._call("GET", path, params=params)
            except errors.Gone:
                if token is None:
                    raise
                # The snapshot behind our continue token was compacted: list it whole.
                page = await self._call("GET", path, params=base)
                items = []
            items.extend(_fill_type(res, item) for item in page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                return ObjectList(items=items, resource_version=meta.get("resourceVersion", ""))

    async def get(self, res: Resource, namespace: str | None, name: str) -> JSON:
        return _fill_type(res, await self._call("GET", resource_path(res, namespace, name)))

    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: float | None = None,
    ) -> AsyncIterator[WatchEvent]:
        params = {"watch": "true", "allowWatchBookmarks": "true"}
        if label_selector:
            params["labelSelector"] = label_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        if timeout_seconds:
            # The server takes whole seconds; we also stop on our own at the exact deadline.
            params["timeoutSeconds"] = str(max(1, math.ceil(timeout_seconds)))
            deadline = loop.time() + timeout_seconds
        # No total timeout: the stream is meant to last. Connecting is still bounded.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.request_timeout, sock_connect=self.request_timeout)
        path = resource_path(res, namespace)
        with self._network(f"watch {path}"):
            resp = await self._send("GET", path, params=params, client_timeout=timeout)
            async with resp:
                buffer = bytearray()
                while True:
                    if deadline is None:
                        chunk = await resp.content.readany()
                    else:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            return
                        try:
                            async with asyncio.timeout(remaining):
                                chunk = await resp.content.readany()
                        except TimeoutError:
                            return
                    if not chunk:
                        if buffer.strip():
                            event = self._event(res, bytes(buffer))
                            if event is not None:
                                yield event
                        return
                    buffer += chunk
                    while (end := buffer.find(b"\n")) >= 0:
                        line = bytes(buffer[:end])
                        del buffer[: end + 1]
                        event = self._event(res, line) if line.strip() else None
                        if event is not None:
                            yield event

    def _event(self, res: Resource, line: bytes) -> WatchEvent | None:
        """One line of the stream; ERROR events become their typed error (410 -> Gone)."""
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise errors.ApiError(f"cluster {self.name}: bad watch line {line[:200]!r}") from exc
        if not isinstance(raw, dict):
            raise errors.ApiError(f"cluster {self.name}: bad watch event {line[:200]!r}")
        kind = raw.get("type")
        obj = raw.get("object") or {}
        if kind == "ERROR":
            raise errors.from_status(int(obj.get("code") or 500), obj)
        if kind not in _WATCH_TYPES:
            return None  # unknown future event types are skipped, as client-go does
        return WatchEvent(kind, _fill_type(res, obj))

    # -- writes ----------------------------------------------------------------------------

    @staticmethod
    def _namespace_of(res: Resource, obj: JSON) -> str | None:
        if not res.namespaced:
            return None
        return (obj.get("metadata") or {}).get("namespace") or "default"

    async def create(self, res: Resource, obj: JSON) -> JSON:
        path = resource_path(res, self._namespace_of(res, obj))
        return _fill_type(res, await self._call("POST", path, body=_fill_type(res, dict(obj))))

    async def replace(self, res: Resource, obj: JSON, subresource: str | None = None) -> JSON:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            raise errors.Invalid(f"{res.kind}: metadata.name is required to replace")
        path = resource_path(res, self._namespace_of(res, obj), name, subresource)
        return _fill_type(res, await self._call("PUT", path, body=_fill_type(res, dict(obj))))

    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
    ) -> JSON:
        content_type = _PATCH_CONTENT_TYPES.get(patch_type)
        if content_type is None:
            raise errors.Invalid(f"unsupported patch type {patch_type!r}")
        path = resource_path(res, namespace, name, subresource)
        result = await self._call("PATCH", path, body=patch, content_type=content_type)
        return _fill_type(res, result)

    async def delete(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        resource_version: str | None = None,
    ) -> None:
        body: JSON | None = None
        if resource_version:
            body = {
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "preconditions": {"resourceVersion": resource_version},
            }
        await self._call("DELETE", resource_path(res, namespace, name), body=body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
