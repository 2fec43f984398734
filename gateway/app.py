"""The gateway process: Ingress informers in the hub -> route table -> data path, and an admin port.

Config changes (an Ingress, an IngressClass, a Service's endpoints) apply within a second:
the route table is rebuilt off the event that changed it, in a thread of its own so the event
loop keeps serving, and swapped into the proxy; in-flight requests and open connections keep
going. With `listen_tls`, a second listener terminates TLS with the certificates of the
Ingresses' `spec.tls` (gateway/tls.py, chosen by SNI; Secrets are watched in the hub); both
listeners share the table.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial

from aiohttp import web

from gateway.access_log import AccessLog
from gateway.credentials import CredentialStore
from gateway.events import EventRecorder
from gateway.metrics import GatewayMetrics, UpstreamCollector
from gateway.proxy import Limits, ProxyServer
from gateway.proxy.listener import Acceptor, AcceptorCollector
from gateway.routing import BuildOptions, RouteTable, build_route_table, select_ingresses
from gateway.routing.extauth import AuthScope, header_map_problem
from gateway.routing.ratelimit import RateZones
from gateway.routing.reuse import Reuse
from gateway.routing.tls import host_has_certificate
from gateway.routing.values import Problem
from gateway.tls import TLS_SECRET_TYPE, CertificateStore, trim_secret
from gateway.types import BackendRef
from gateway.upstream import UpstreamManager
from gateway.upstream_tls import UpstreamTLSStore
from mcs_controller.access.api import ClusterClient
from mcs_controller.access.informer import Informer
from mcs_controller.access.resources import (
    CONFIG_MAPS,
    EVENTS,
    INGRESS_CLASSES,
    INGRESSES,
    SECRETS,
)
from mcs_controller.model.timestamps import rfc3339
from mcs_controller.ops.admin import AdminServer
from mcs_controller.ops.metrics import new_registry

log = logging.getLogger("gateway")

#: ingress-nginx's defaults: hsts true, hsts-max-age 31536000, hsts-include-subdomains true,
#: hsts-preload false.
HSTS_DEFAULT = "max-age=31536000; includeSubDomains"
#: The interpreter's thread switch interval while the gateway runs (see `GatewayApp.start`).
SWITCH_INTERVAL = 0.001


class GatewayApp:
    def __init__(
        self,
        hub: ClusterClient,
        members: Mapping[str, ClusterClient],
        *,
        listen: tuple[str, int] = ("0.0.0.0", 8080),
        admin: tuple[str, int] | None = ("0.0.0.0", 8082),
        class_name: str = "amcs",
        controller: str = "amcs.dev/gateway",
        accept_classless: bool = False,
        limits: Limits | None = None,
        registry=None,
        rebuild_delay: float = 0.05,
        listen_tls: tuple[str, int] | None = None,
        default_cert: str | None = None,
        default_key: str | None = None,
        https_redirect_port: int | None = None,
        xff_trusted: Iterable[str] = (),
        hsts: str = HSTS_DEFAULT,
        default_backend: str | None = None,
        rate_limit_status: tuple[int, int] = (503, 503),
        auth_scope: AuthScope | None = None,
        ssl_passthrough: bool = False,
        access_log: str | None = None,
        proxy_protocol: bool = False,
    ):
        """`listen_tls`: the HTTPS listener (None: plain HTTP only). `default_cert/_key`:
        PEM files of the default certificate (else a self-signed one; TLSConfigError when
        unusable). `https_redirect_port`: the port ssl-redirect Locations name (None: the
        HTTPS listener's; 443 is left out). `xff_trusted`: CIDRs of proxies whose
        X-Forwarded-* headers are kept (and whose X-Forwarded-Proto: https is not redirected).
        `hsts`: the Strict-Transport-Security value on the HTTPS listener's proxied responses
        for hosts with a certificate ("" for none; ingress-nginx's default). `default_backend`:
        "namespace/name" of the Service answering requests no rule matches, and the
        custom-http-errors pages of Ingresses without their own default-backend.
        `rate_limit_status`: the statuses refused by limit-rps/-rpm and by limit-connections.
        `auth_scope`: the global-auth-* check and no-auth-locations (gateway/routing/extauth.py).
        `ssl_passthrough`: --enable-ssl-passthrough (with `listen_tls`; gateway/proxy/passthrough.py).
        `access_log`: a file, or "-" (standard output), for one JSON line per request
        (gateway/access_log.py; OSError when it cannot be opened). `proxy_protocol`: every
        connection to either listener starts with a PROXY protocol header naming the client
        (gateway/proxy/listener.py)."""
        self.ssl_passthrough = ssl_passthrough and listen_tls is not None
        #: limit-rps/-rpm/-connections counters: shared by both listeners, kept across rebuilds.
        self.rate_zones = RateZones(*rate_limit_status)
        self.registry = registry if registry is not None else new_registry()
        self.metrics = GatewayMetrics(self.registry)
        self.access_log = AccessLog(access_log, self.registry) if access_log else None
        self.upstream = UpstreamManager(members)
        self.registry.register(UpstreamCollector(self.upstream))
        self.hub = hub
        self.events = EventRecorder(partial(hub.create, EVENTS))  # paced (gateway/events.py)
        self.ingresses = Informer(hub, INGRESSES)
        self.classes = Informer(hub, INGRESS_CLASSES)
        #: What every build is given besides the Ingresses (the Services, the ConfigMap
        #: reader and the redirect settings are added per build).
        self.build_options = BuildOptions(
            class_name=class_name, controller=controller, accept_classless=accept_classless,
            clusters=frozenset(members), default_backend=default_backend,
            rate_zones=self.rate_zones, auth_scope=auth_scope or AuthScope(),
            ssl_passthrough=self.ssl_passthrough, reuse=Reuse())
        self.table, _ = build_route_table([], [], self.build_options)
        self.proxy = ProxyServer(self.table, self.upstream, metrics=self.metrics, limits=limits,
                                 xff_trusted=xff_trusted, access_log=self.access_log,
                                 proxy_protocol=proxy_protocol)
        self.listen = listen
        self.listen_tls = listen_tls
        self.https_redirect_port = https_redirect_port
        self.tls: CertificateStore | None = None
        self.proxy_tls: ProxyServer | None = None
        # TLS certificates and basic-auth users (auth-secret) come from the hub's Secrets
        self.secrets = Informer(hub, SECRETS, transform=trim_secret)
        self.proxy.credentials = CredentialStore(self._secret)
        self.proxy.upstream_tls = UpstreamTLSStore(self._secret)  # proxy-ssl-secret
        self.upstream.health.tls_for = self.proxy.upstream_tls.context
        # auth-proxy-set-headers: ConfigMaps in the hub; those the last build read
        self.configmaps = Informer(hub, CONFIG_MAPS, transform=trim_configmap)
        self._configmaps_read: set[tuple[str, str]] = set()
        #: How long the first build waits for them (an upgrade without the RBAC for them
        #: must not keep the gateway from ever becoming ready).
        self.configmap_wait = 5.0
        if listen_tls is not None:
            self.tls = CertificateStore(default_cert, default_key)
            # One route table serves both listeners (each request carries its scheme).
            self.proxy_tls = ProxyServer(self.table, self.upstream, metrics=self.metrics,
                                         limits=limits, xff_trusted=xff_trusted, scheme="https",
                                         access_log=self.access_log, proxy_protocol=proxy_protocol)
            if hsts:
                self.proxy_tls.hsts = f"Strict-Transport-Security: {hsts}\r\n".encode("latin-1")
            self.proxy_tls.credentials = self.proxy.credentials
            self.proxy_tls.upstream_tls = self.proxy.upstream_tls
        self.rebuild_delay = rebuild_delay
        self.admin = (
            AdminServer(admin[0], admin[1], self.registry, ready=self._ready, encode_aside=True,
                        render=self.metrics.render,
                        routes=[web.get("/routes", self._routes)])
            if admin is not None else None
        )
        self.problems: list = []
        self.draining = False  # (see `drain`)
        self.problem_texts: frozenset[str] = frozenset()  # (what the builder compares with)
        self._rebuild: asyncio.TimerHandle | None = None
        #: Builds after the first run here, off the event loop (`_rebuild_aside`).
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="route-build")
        self._building: asyncio.Future | None = None
        self._stale = False  # an event came while `_building`
        self._built = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # A build in the builder thread hands the GIL back to the event loop after at most
        # this long (CPython's default, 5 ms, would be a request's added latency meanwhile).
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        for informer in (self.ingresses, self.classes):
            informer.add_handler(lambda *_: self._schedule_rebuild())
            informer.start()
        self.secrets.add_handler(self._secret_changed)
        self.secrets.start()
        self.configmaps.add_handler(self._configmap_changed)
        self.configmaps.start()
        for member in self.upstream.catalog.members.values():
            member.services.add_handler(self._service_changed)
        await self.upstream.start(wait=False)
        await self.proxy.start(*self.listen)
        if self.proxy_tls is not None and self.listen_tls is not None and self.tls is not None:
            await self.proxy_tls.start(*self.listen_tls, ssl=self.tls.context,
                                       passthrough=self._passthrough if self.ssl_passthrough else None)
        if self.proxy.proxy_protocol or self.ssl_passthrough:
            self.registry.register(AcceptorCollector(self._acceptors))
        if self.admin is not None:
            await self.admin.start()
        asyncio.get_running_loop().create_task(self._first_build())

    async def _first_build(self) -> None:
        await self.ingresses.synced.wait()
        await self.classes.synced.wait()
        await self.secrets.synced.wait()  # else a host's certificate would be missing at first
        try:  # only auth-proxy-set-headers needs them: never hold readiness on ConfigMaps
            await asyncio.wait_for(self.configmaps.synced.wait(), self.configmap_wait)
        except TimeoutError:
            log.warning("hub ConfigMaps not listed after %.0f s (RBAC: get/list/watch configmaps?); "
                        "routes with auth-proxy-set-headers answer 503 until they are",
                        self.configmap_wait)
        await self.upstream.catalog.wait_synced(None)
        self.rebuild()
        # The synced caches and the table live as long as the process: keep the collector's
        # full passes off them, or those passes show up in the data path's tail latency.
        gc.collect()
        gc.freeze()

    async def stop(self, grace: float = 5.0) -> None:
        if self._rebuild is not None:
            self._rebuild.cancel()
        if self._building is not None:
            self._building.cancel()
        self._builder.shutdown(wait=False, cancel_futures=True)
        if self.proxy_tls is not None:
            await asyncio.gather(self.proxy.stop(grace), self.proxy_tls.stop(grace))
        else:
            await self.proxy.stop(grace)
        for informer in (self.ingresses, self.classes, self.secrets, self.configmaps):
            await informer.stop()
        await self.upstream.stop()
        if self.admin is not None:
            await self.admin.stop()
        await self.events.stop()
        if self.access_log is not None:
            self.access_log.close()
        if self.tls is not None:
            self.tls.close()

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen[0], self.proxy.port)

    @property
    def address_tls(self) -> tuple[str, int] | None:
        if self.listen_tls is None or self.proxy_tls is None:
            return None
        return (self.listen_tls[0], self.proxy_tls.port)

    @property
    def admin_port(self) -> int | None:
        return self.admin.bound_port if self.admin is not None else None

    @property
    def ready(self) -> bool:
        return self._built.is_set()

    def _ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting down (draining connections)"
        return (True, "ok") if self.ready else (False, "route table not built (informers syncing)")

    def drain(self) -> None:
        """The start of a graceful stop: /readyz fails and clients are moved off (each
        connection closes after its response) while the listeners still serve."""
        self.draining = True
        self.proxy.drain()
        if self.proxy_tls is not None:
            self.proxy_tls.drain()

    async def wait_ready(self, within: float = 10.0) -> None:
        await asyncio.wait_for(self._built.wait(), within)

    # -- configuration -------------------------------------------------------------------------

    def _schedule_rebuild(self) -> None:
        """Coalesce bursts of events into one rebuild, well within a second; an event while a
        build runs gets one more build when it ends."""
        if not self._built.is_set():
            return
        if self._building is not None:
            self._stale = True
        elif self._rebuild is None:
            self._rebuild = asyncio.get_running_loop().call_later(self.rebuild_delay,
                                                                  self._rebuild_aside)

    def _services(self) -> dict[tuple[str, str], dict]:
        """Services by (namespace, name), from the member clusters (namespace sameness)."""
        out: dict[tuple[str, str], dict] = {}
        for member in self.upstream.catalog.members.values():
            for svc in member.services.items():
                meta = svc["metadata"]
                out.setdefault((meta["namespace"], meta["name"]), svc)
        return out

    def _service_changed(self, kind: str, obj: dict, old: dict | None) -> None:
        """A member's Service appeared, went, or changed its ports: the table resolves ports
        (and default-backend) from Services, so rebuild; other Service changes do not matter."""
        if old is None or kind == "DELETED" or \
                (obj.get("spec") or {}).get("ports") != (old.get("spec") or {}).get("ports"):
            self._schedule_rebuild()

    def _secret_changed(self, _type: str, obj: dict, _old: dict | None) -> None:
        """A TLS Secret, or one an Ingress names, changed: recompute the certificates."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if self.tls is not None and (obj.get("type") == TLS_SECRET_TYPE
                                     or key in self.tls.referenced):
            self._schedule_rebuild()

    def _secret(self, namespace: str, name: str) -> dict | None:
        return self.secrets.get(namespace, name)

    def _acceptors(self) -> list[tuple[str, Acceptor | None]]:
        """The listeners that look at connections first, by name (for their metrics)."""
        tls = self.proxy_tls.acceptor if self.proxy_tls is not None else None
        return [("http", self.proxy.acceptor), ("https", tls)]

    def _passthrough(self, server_name: str) -> BackendRef | None:
        """The ssl-passthrough backend of a TLS server name (None: terminate here)."""
        return self.table.passthrough.get(server_name)

    def _configmap_changed(self, _type: str, obj: dict, _old: dict | None) -> None:
        """A ConfigMap the last build read (or looked for) changed: rebuild."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if key in self._configmaps_read or self._building is not None:  # (it may read it)
            self._schedule_rebuild()

    def _configmap_reader(self, read: set[tuple[str, str]]) -> Callable[[str, str], dict | None]:
        def configmap(namespace: str, name: str) -> dict | None:
            read.add((namespace, name))
            return self.configmaps.get(namespace, name)
        return configmap

    def rebuild(self) -> None:
        """Build the table from the caches and install it, here and now (the first build)."""
        self._rebuild = None
        self._install(*self._compile(self._build_inputs()))

    def _rebuild_aside(self) -> None:
        """Build in the builder thread and install when done: the event loop keeps serving
        meanwhile (the thread takes the GIL in slices, so requests see a few ms at worst, not
        the whole build). Only the snapshot and the install run on the loop."""
        self._rebuild = None
        self._stale = False
        inputs = self._build_inputs()
        building = asyncio.get_running_loop().run_in_executor(self._builder, self._compile, inputs)
        self._building = building
        building.add_done_callback(self._built_aside)

    def _built_aside(self, building: asyncio.Future) -> None:
        self._building = None
        if building.cancelled():  # stopping
            return
        error = building.exception()
        if error is not None:  # (build_route_table isolates each Ingress: a bug, not bad input)
            log.error("route table build failed; the previous table keeps serving: %r", error)
        else:
            self._install(*building.result())
        if self._stale:  # something changed while it ran
            self._schedule_rebuild()

    def _build_inputs(self) -> tuple:
        """The snapshot a build works from (on the loop: the caches change only here)."""
        read: set[tuple[str, str]] = set()
        options = replace(self.build_options, services=self._services(),
                          configmap=self._configmap_reader(read),
                          https_port=self._redirect_port())
        return (self.ingresses.items(), self.classes.items(), options, read, self.tls,
                self._secret, self.problem_texts)

    @staticmethod
    def _compile(inputs: tuple) -> tuple:
        """The build itself: the certificates first (the table's HTTPS redirects need their
        hosts; the handshakes see the new ones at once, swapped whole), then the table. Pure
        but for those and the rate-limit zones it names (RateZones)."""
        ingresses, classes, options, read, tls, secret, known = inputs
        tls_problems: list = []
        if tls is not None:
            ours, _ = select_ingresses(ingresses, classes, class_name=options.class_name,
                                       controller=options.controller,
                                       accept_classless=options.accept_classless)
            tls_problems = tls.update(ours, secret)
            options = replace(options, tls_hosts=tls.hosts)
        table, problems = build_route_table(ingresses, classes, options)
        if tls is not None:
            tls_problems += tls.update_client_auth(table.client_certs, secret)
        else:
            for check in {id(c): c for c in table.client_certs.values() if c is not None}.values():
                tls_problems.append(Problem(check.ingress, "auth-tls-secret", (
                    f"host {check.host}: client certificates need the HTTPS listener "
                    "(--listen-tls); plain-HTTP requests are not checked, as in ingress-nginx")))
        problems += tls_problems
        texts = [str(p) for p in problems]  # what the last install reported is not reported again
        fresh = [p for p, text in zip(problems, texts, strict=True) if text not in known]
        return table, problems, frozenset(texts), fresh, read, options.tls_hosts

    def _install(self, table: RouteTable, problems: list, texts: frozenset[str], fresh: list,
                 read: set[tuple[str, str]], tls_hosts: Collection[str]) -> None:
        if self.proxy_tls is not None:
            self.proxy_tls.router = table
            self.proxy_tls.hsts_for = partial(host_has_certificate, tls_hosts=tls_hosts)
        self.rate_zones.prune()  # zones of Ingresses gone
        self._configmaps_read = read
        for problem in fresh:
            log.warning("%s", problem)
            self._record_event(problem)
        self.problems, self.problem_texts = problems, texts
        self.upstream.sync(table.backends())
        self.proxy.router = table
        self.table = table
        self.metrics.config_reloads.inc()
        self.metrics.config_problems.set(len(problems))
        self._built.set()

    def _redirect_port(self) -> int | None:
        if self.https_redirect_port is not None:
            return self.https_redirect_port
        return self.proxy_tls.port if self.proxy_tls is not None else None

    def _record_event(self, problem) -> None:
        """A Warning Event on the Ingress, so `kubectl describe ingress` shows what was ignored."""
        ns, _, name = problem.ingress.partition("/")
        ingress = self.ingresses.get(ns, name)
        if ingress is None:
            return
        now = rfc3339(time.time())
        event = {
            "metadata": {"generateName": f"{name}.", "namespace": ns},
            "involvedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                               "name": name, "namespace": ns,
                               "uid": ingress["metadata"].get("uid", "")},
            "reason": getattr(problem, "reason", None)
            or ("AnnotationIgnored" if problem.annotation else "IngressIgnored"),
            "message": str(problem), "type": "Warning",
            "source": {"component": "amcs-gateway"}, "reportingComponent": "amcs.dev/gateway",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self.events.record(event)

    # -- admin -----------------------------------------------------------------------------------

    async def _routes(self, request: web.Request) -> web.Response:
        """The route table with every backend's endpoints: cluster, health, ejection."""
        table = self.table  # (an installed table never changes: read in the worker thread)
        backends = []
        for ref, policy in table.backends().items():
            backends.append({
                "backend": str(ref),
                "policy": {"algorithm": policy.algorithm, "hash_by": policy.hash_by,
                           "cluster_weights": dict(policy.cluster_weights),
                           "priority_pools": [list(p) for p in policy.priority_pools],
                           "panic_threshold": policy.panic_threshold,
                           "health_check": policy.health_check is not None},
                "state": self.upstream.summary(ref),
                "endpoints": self.upstream.describe(ref),
            })
        tls = self.tls.describe() if self.tls is not None else None
        problems = self.problems

        def write() -> str:
            return _dumps({"routes": table.describe(), "wwwRedirects": table.describe_www(),
                           "sslPassthrough": table.describe_passthrough(),
                           "serverAliases": table.describe_aliases(),
                           "defaultBackend": table.describe_default(),
                           "backends": backends, "tls": tls,
                           "problems": [str(p) for p in problems]})

        # The live endpoint state is read here; the table's description and json's indented
        # output (pure Python) are written in a worker thread (2000 Ingresses: 4 MB, 170 ms).
        text = await asyncio.get_running_loop().run_in_executor(None, write)
        return web.Response(text=text, content_type="application/json")


def _dumps(obj: object) -> str:
    return json.dumps(obj, indent=2, default=str)


def trim_configmap(obj: dict) -> dict:
    """Informer transform: a ConfigMap's metadata (less managedFields and annotations) and,
    only when it could be an auth-proxy-set-headers map (every key a header name, 64 KiB at
    most), its `data`; others keep why not (`unusable`), so the cluster's dashboards and
    scripts are never held. `binaryData` is never read."""
    meta = obj.get("metadata") or {}
    out: dict = {"metadata": {k: v for k, v in meta.items() if k not in ("managedFields", "annotations")}}
    data = obj.get("data") or {}
    why = header_map_problem(data)
    if why is None:
        out["data"] = data
    else:
        out["unusable"] = why
    return out
