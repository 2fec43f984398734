"""Simulated pods: what the kubelet and the container would do, on loopback addresses.

Every Pod whose `status.podIP` is in 127.0.0.0/8 and that declares TCP container ports gets
an HTTP/1.1 server on podIP:containerPort (Linux routes all of 127/8 to `lo`, no setup).
It answers like the example's container (hashicorp/http-echo): 200 with the
`amcs.dev/sim-response` text and a newline, on every path; `/healthz` answers `ok`.
Headers `X-Pod` and `X-Cluster` say who answered.

`stop_pod` is a container crash: the port refuses connections at once, then the kubelet
reports Ready=False (so the EndpointSlice controller marks the endpoint not ready);
`start_pod` is the restart. `stop_cluster` takes every pod server of the cluster down
and leaves the API objects alone (pair it with `set_reachable(False)` for a cluster
that vanished whole).

The pure Pod readers here (readiness, addresses, named ports, the endpoint a Pod makes)
serve the EndpointSlice simulator in sim.py.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import time
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

from mcs_controller.access.api import JSON, ClusterClient
from mcs_controller.access.errors import Conflict
from mcs_controller.access.informer import Informer
from mcs_controller.access.resources import PODS
from mcs_controller.model.timestamps import rfc3339

log = logging.getLogger("mcs_fleet.pods")

SIM_RESPONSE_ANNOTATION = "amcs.dev/sim-response"
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
Key = tuple[str, str]


def pod_ready(pod: JSON) -> bool:
    """The kubelet's verdict: condition Ready is "True"."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def pod_in_endpoints(pod: JSON) -> bool:
    """Upstream ShouldPodBeInEndpoints (terminating pods included): an IP, not terminal."""
    status = pod.get("status") or {}
    return bool(status.get("podIP")) and status.get("phase") not in ("Succeeded", "Failed")


def pod_address(pod: JSON, family: str) -> str | None:
    """The pod's first IP of `family` (status.podIPs, else status.podIP)."""
    status = pod.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or []] or [status.get("podIP")]
    for ip in ips:
        try:
            addr = ipaddress.ip_address(ip or "")
        except ValueError:
            continue
        if (addr.version == 4) == (family == "IPv4"):
            return str(addr)
    return None


def resolve_port(service_port: JSON, pod: JSON) -> int | None:
    """targetPort as a number, or a named container port of the pod (same protocol)."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    proto = service_port.get("protocol", "TCP")
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == proto:
                return port.get("containerPort")
    return None


def endpoint_ports(service: JSON, pod: JSON) -> list[JSON]:
    """The slice ports for this pod; a port whose named target the pod lacks is left out."""
    out = []
    for sp in (service.get("spec") or {}).get("ports") or []:
        number = resolve_port(sp, pod)
        if number is None:
            continue
        port = {"name": sp.get("name", ""), "port": number, "protocol": sp.get("protocol", "TCP")}
        if sp.get("appProtocol"):
            port["appProtocol"] = sp["appProtocol"]
        out.append(port)
    return out


def pod_endpoint(pod: JSON, service: JSON, address: str) -> JSON:
    """Upstream podToEndpoint: conditions, targetRef, nodeName, hostname (StatefulSet rule)."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    serving = pod_ready(pod)
    terminating = bool(meta.get("deletionTimestamp"))
    publish = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    ep: JSON = {
        "addresses": [address],
        "conditions": {"ready": publish or (serving and not terminating),
                       "serving": serving, "terminating": terminating},
    }
    svc_meta = service["metadata"]
    if (spec.get("hostname") and spec.get("subdomain") == svc_meta["name"]
            and meta.get("namespace") == svc_meta.get("namespace")):
        ep["hostname"] = spec["hostname"]
    if spec.get("nodeName"):
        ep["nodeName"] = spec["nodeName"]
    ep["targetRef"] = {"kind": "Pod", "namespace": meta.get("namespace", ""),
                       "name": meta["name"], "uid": meta.get("uid", "")}
    return ep


@dataclass(frozen=True)
class ServeSpec:
    """What one pod serves; a change of any field restarts its server."""

    ip: str
    ports: tuple[int, ...]
    text: str


def serve_spec(pod: JSON, cluster: str) -> ServeSpec | None:
    """The pod's server, or None when it is not a running simulated pod with a TCP port."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    try:
        ip = ipaddress.ip_address(status.get("podIP") or "")
    except ValueError:
        return None
    if ip.version != 4 or ip not in _LOOPBACK:
        return None
    ports = sorted({
        p["containerPort"]
        for c in (pod.get("spec") or {}).get("containers") or []
        for p in c.get("ports") or []
        if isinstance(p.get("containerPort"), int) and p.get("protocol", "TCP") == "TCP"
    })
    if not ports:
        return None
    text = (meta.get("annotations") or {}).get(SIM_RESPONSE_ANNOTATION) or f"This is env {cluster} !"
    return ServeSpec(str(ip), tuple(ports), text)


class _PodServer:
    """One pod's HTTP listeners (one per container port), sharing one aiohttp server."""

    def __init__(self, spec: ServeSpec, pod: str, cluster: str, counter: Counter[Key], key: Key,
                 shutdown_timeout: float):
        self.spec = spec
        self._headers = {"X-Pod": pod, "X-Cluster": cluster}
        self._body = (spec.text + "\n").encode()
        self._counter, self._key = counter, key
        self._runner = web.ServerRunner(web.Server(self._handle, access_log=None),
                                        shutdown_timeout=shutdown_timeout)

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        self._counter[self._key] += 1
        if request.path == "/healthz":
            return web.Response(text="ok", headers=self._headers)
        return web.Response(body=self._body, headers=self._headers,
                            content_type="text/plain", charset="utf-8")

    async def start(self) -> None:
        await self._runner.setup()
        try:
            for port in self.spec.ports:
                await web.TCPSite(self._runner, self.spec.ip, port, reuse_address=True).start()
        except BaseException:
            await self._runner.cleanup()
            raise

    async def close(self) -> None:
        await self._runner.cleanup()


class PodSimulator:
    """The simulated pods of one cluster, following its Pods through an informer."""

    def __init__(self, cluster: ClusterClient, *, shutdown_timeout: float = 0.1):
        self.cluster = cluster
        self.name = cluster.name
        self.shutdown_timeout = shutdown_timeout
        self.pods = Informer(cluster, PODS, backoff_max=2.0)
        #: Requests answered, per pod (namespace, name).
        self.requests: Counter[Key] = Counter()
        #: Pods whose server could not start (e.g. address in use), with the reason.
        self.errors: dict[Key, str] = {}
        self._servers: dict[Key, _PodServer] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._stopped: set[Key] = set()
        self._cluster_down = False
        self._pending: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start following Pods; returns once every current pod's server is up."""
        self.pods.add_handler(self._on_pod)
        self.pods.start()
        await self.pods.synced.wait()
        await self.wait_idle()

    async def stop(self) -> None:
        await self.pods.stop()
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        servers, self._servers = list(self._servers.values()), {}
        await asyncio.gather(*(s.close() for s in servers), return_exceptions=True)

    async def wait_idle(self) -> None:
        """Until every server start/stop triggered so far has finished."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def serving(self, namespace: str, name: str) -> ServeSpec | None:
        """What the pod serves right now (None: nothing listening)."""
        server = self._servers.get((namespace, name))
        return server.spec if server else None

    # -- failures -------------------------------------------------------------------------

    async def stop_pod(self, namespace: str, name: str) -> None:
        """The container crashes: its port refuses connections, then the pod is not Ready."""
        key = (namespace, name)
        self._stopped.add(key)
        await self._sync(key)
        await self._set_ready(namespace, name, False)

    async def start_pod(self, namespace: str, name: str) -> None:
        """The container is back: serving first, then Ready again."""
        key = (namespace, name)
        self._stopped.discard(key)
        await self._sync(key)
        await self._set_ready(namespace, name, True)

    async def stop_cluster(self) -> None:
        """Every pod server of the cluster goes down (the API objects are left as they are)."""
        self._cluster_down = True
        await asyncio.gather(*(self._sync(k) for k in list(self._servers)))

    async def start_cluster(self) -> None:
        self._cluster_down = False
        await asyncio.gather(*(self._sync(k) for k in self.pods.keys()))

    # -- internals ------------------------------------------------------------------------

    def _on_pod(self, _type: str, pod: JSON, _old: JSON | None) -> None:
        meta = pod["metadata"]
        task = asyncio.create_task(self._sync((meta.get("namespace", ""), meta["name"])))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _sync(self, key: Key) -> None:
        """Bring the pod's server in line with its Pod object (idempotent, one at a time)."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            pod = self.pods.get(*key)
            want = None
            if pod is not None and not self._cluster_down and key not in self._stopped:
                want = serve_spec(pod, self.name)
            have = self._servers.get(key)
            if have is not None and have.spec == want:
                return
            if have is not None:
                del self._servers[key]
                await have.close()
                log.debug("cluster %s pod %s/%s: stopped serving", self.name, *key)
            if pod is None:  # a namesake created later starts afresh
                self._stopped.discard(key)
                self.errors.pop(key, None)
            if want is None:
                return
            server = _PodServer(want, key[1], self.name, self.requests, key, self.shutdown_timeout)
            try:
                await server.start()
            except OSError as exc:
                self.errors[key] = str(exc)
                log.error("cluster %s pod %s/%s: cannot serve on %s:%s: %s",
                          self.name, *key, want.ip, ",".join(map(str, want.ports)), exc)
                return
            self.errors.pop(key, None)
            self._servers[key] = server
            log.debug("cluster %s pod %s/%s: serving on %s:%s", self.name, *key, want.ip,
                      ",".join(map(str, want.ports)))

    async def _set_ready(self, namespace: str, name: str, ready: bool) -> None:
        """What the kubelet reports after a container dies or comes back (status subresource)."""
        for _ in range(5):
            pod = await self.cluster.get(PODS, namespace, name)
            status = copy.deepcopy(pod.get("status") or {})
            if not _set_conditions(status, ready, self.cluster):
                return
            pod["status"] = status
            try:
                written = await self.cluster.replace(PODS, pod, subresource="status")
            except Conflict:
                continue
            self.pods.remember(written)
            return
        raise Conflict(f"pod {namespace}/{name}: status kept changing")


def _set_conditions(status: JSON, ready: bool, cluster: ClusterClient) -> bool:
    """Ready and ContainersReady (and containerStatuses[].ready) to `ready`; True if changed."""
    value = "True" if ready else "False"
    now = rfc3339(getattr(cluster, "clock", time.time)())
    conditions = status.setdefault("conditions", [])
    changed = False
    for ctype in ("Ready", "ContainersReady"):
        cond = next((c for c in conditions if c.get("type") == ctype), None)
        if cond is None:
            if ctype == "ContainersReady":
                continue  # the examples carry only Ready; add nothing they did not have
            cond = {"type": ctype}
            conditions.append(cond)
        if cond.get("status") == value:
            continue
        cond["status"] = value
        cond["lastTransitionTime"] = now
        if ready:
            cond.pop("reason", None)
            cond.pop("message", None)
        else:
            cond["reason"] = "ContainersNotReady"
        changed = True
    for cs in status.get("containerStatuses") or []:
        if cs.get("ready") != ready:
            cs["ready"] = ready
            changed = True
    return changed
