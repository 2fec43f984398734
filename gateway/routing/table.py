"""The compiled route table: what the data path asks per request (`Router.route`).

Per request: one host lookup, a few path dict probes, then either a prebuilt
`RouteDecision` (the common case: no canary, no weighted destinations, no cluster header,
no rewrite, no HTTPS redirect; other redirects and cookie affinity are prebuilt too) or
the affinity steps / canary procedure / weighted pick / cluster pin, each choosing among
decisions that were also prebuilt. Only `rewrite-target`, `app-root` and the HTTPS
redirect build a decision per request (a `dataclasses.replace` of a prebuilt one).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gateway.types import (
    BackendPolicy,
    BackendRef,
    RequestView,
    RouteDecision,
    Router,
    SessionAffinity,
    UpstreamTLS,
)

from .affinity import regex_cookie_path, sticky_side
from .allow import AllowCheck, SourceRange
from .canary import CanaryRule
from .errors import describe_errors
from .matching import HostTable, normalize_request_host
from .policy import policy_json
from .rewrite import Rewriter, RewriteSettings, app_root_redirect
from .settings import ClusterRouting
from .tls import HttpsRedirect, SslRedirect
from .www import WwwRedirect


@dataclass
class Choice:
    """One decision a route can return, plus its variants pinned to each member cluster."""

    decision: RouteDecision
    pinned: dict[str, RouteDecision] = field(default_factory=dict)

    def pin_all(self, clusters: frozenset[str], strict: bool) -> None:
        base = self.decision
        for cluster in clusters:
            if base.backend.cluster == cluster:
                self.pinned[cluster] = base
                continue
            fallbacks: tuple[BackendRef, ...] = ()
            if strict:  # that cluster only, but the default backend's page stays
                if base.default_backend is not None:
                    fallbacks = (base.default_backend,)
            else:
                fallbacks = (base.backend, *base.fallbacks)
            self.pinned[cluster] = replace(
                base, backend=replace(base.backend, cluster=cluster), fallbacks=fallbacks)


@dataclass
class Route:
    """One rule (host + path + pathType) of one main Ingress, with its merged canary."""

    ingress: str
    host: str
    path: str
    path_type: str  # Exact | Prefix | ImplementationSpecific | "" for a defaultBackend
    #: The main line: one choice, or several with cumulative weights (MSE `destination`).
    primary: list[tuple[float, Choice]]
    routing: ClusterRouting = field(default_factory=ClusterRouting)
    canary: CanaryRule | None = None
    canary_ingress: str | None = None
    canary_choice: Choice | None = None
    use_regex: bool = False
    static: bool = True
    plain: bool = True  # one prebuilt decision, before any rewrite
    #: The owning Ingress's rewrite/redirect annotations (rule routes of main Ingresses).
    rewrite: RewriteSettings | None = None
    rewriter: Rewriter | None = None  # compiled at finish when this rule is rewritten
    #: Set on the synthetic Exact "/" route of a host with `app-root`: the Location path.
    app_root: str | None = None
    #: The owning Ingress's ssl-redirect annotations (None on the catch-all defaultBackend),
    #: and, when this route redirects plain HTTP to HTTPS, the redirector (set at finish).
    ssl: SslRedirect | None = None
    https: HttpsRedirect | None = None
    #: The owning Ingress's allowlist-source-range, and its check (set at finish).
    source: SourceRange | None = None
    allow: AllowCheck | None = None
    #: Cookie affinity of each side, when there is more than one side (main line, weighted
    #: destinations, canary): a request whose cookie one of them issued goes back to it.
    sticky: tuple[tuple[SessionAffinity, Choice], ...] = ()
    #: auth-tls-*: the host's ClientCertCheck (gateway/routing/clientcert.py).
    client_cert: Any = None

    def bind_client_cert(self) -> None:
        """Every decision of this route carries the host's client-certificate check (the
        redirects and denials derived from them too)."""
        for choice in [c for _, c in self.primary] + ([self.canary_choice] if self.canary_choice else []):
            choice.decision = replace(choice.decision, client_cert=self.client_cert)

    def finish(self, clusters: frozenset[str]) -> None:
        """Precompute pinned variants; decide whether route() can skip all logic."""
        choices = [c for _, c in self.primary] + ([self.canary_choice] if self.canary_choice
                                                  else [])
        for choice in choices:
            d = choice.decision
            if d.affinity is not None and self.use_regex:
                choice.decision = replace(d, affinity=regex_cookie_path(d.affinity, self.path))
        if len(choices) > 1:  # one side only: its prebuilt decision carries the affinity
            self.sticky = tuple((c.decision.affinity, c) for c in choices
                                if c.decision.affinity is not None)
        if self.routing.active and clusters:
            for choice in choices:
                choice.pin_all(clusters, self.routing.strict)
        self.plain = (self.canary is None and len(self.primary) == 1
                      and not (self.routing.active and clusters))
        self.static = (self.plain and self.rewriter is None and self.app_root is None
                       and self.https is None and self.allow is None)

    def decide(self, request: RequestView, rng: random.Random,
               clusters: frozenset[str]) -> RouteDecision:
        if self.app_root is not None:
            return app_root_redirect(self.primary[0][1].decision, request.scheme,
                                     self.app_root, request)
        # Before canary and balancing (ingress-nginx's lua rewrite); plain HTTP only (the
        # HTTPS listener shares this table).
        if self.https is not None and request.scheme == "http":
            redirect = self.https.apply(self.primary[0][1].decision, request)
            if redirect is not None:
                return redirect
        decision = self._choose(request, rng, clusters)
        if self.allow is not None and decision.redirect is None:  # after redirects, as nginx
            denied = self.allow.denied(request)
            if denied is not None:
                return denied
        if self.rewriter is not None and decision.redirect is None:
            return self.rewriter.apply(decision, request.path)
        return decision

    def _choose(self, request: RequestView, rng: random.Random,
                clusters: frozenset[str]) -> RouteDecision:
        if self.plain:
            return self.primary[0][1].decision
        # ingress-nginx runs the affinity steps first: a cookie keeps its side.
        choice = sticky_side(request.headers, self.sticky) if self.sticky else None
        if choice is None and self.canary is not None:
            path = request.path
            mark = path.find("?")
            query = path[mark + 1:] if mark >= 0 else ""
            if self.canary.chooses_canary(request.headers, query, rng):
                choice = self.canary_choice
        if choice is None:
            choice = self.primary[0][1]
            if len(self.primary) > 1:
                point = rng.random() * 100.0
                for cumulative, candidate in self.primary:
                    if point < cumulative:
                        choice = candidate
                        break
        if self.routing.active:
            cluster = self._cluster_for(request.headers, clusters)
            if cluster is not None:
                return choice.pinned.get(cluster, choice.decision)
        return choice.decision

    def _cluster_for(self, headers: Mapping[str, str], clusters: frozenset[str]) -> str | None:
        routing = self.routing
        if routing.header is not None:
            value = headers.get(routing.header)
            if value:
                value = value.strip().lower()
                if value in clusters:
                    return value
        for name, expected, cluster in routing.matches:
            if headers.get(name) == expected:
                return cluster
        return None

    def decisions(self) -> list[RouteDecision]:
        out: list[RouteDecision] = []
        for choice in [c for _, c in self.primary] + ([self.canary_choice]
                                                      if self.canary_choice else []):
            out.append(choice.decision)
            out.extend(choice.pinned.values())
        return out


class RouteTable(Router):
    """Implements `gateway.types.Router`; immutable once built (rebuild on any change)."""

    def __init__(self, hosts: HostTable[Route], backends: dict[BackendRef, BackendPolicy],
                 clusters: frozenset[str], rng: random.Random | None = None,
                 www: dict[str, WwwRedirect] | None = None, default: RouteDecision | None = None,
                 passthrough: dict[str, BackendRef] | None = None):
        self._hosts = hosts
        self._exact = hosts.exact
        #: from-to-www-redirect hosts (gateway/routing/www.py): after exact hosts, before wildcards.
        self._www: dict[str, WwwRedirect] = www or {}
        #: --default-backend-service: for requests no host or path rule matches (None: 404).
        self._default = default
        #: ssl-passthrough hosts (TLS server name -> backend; gateway/routing/passthrough.py).
        self.passthrough: dict[str, BackendRef] = passthrough or {}
        #: auth-tls-* hosts (aliases included) -> their ClientCertCheck (gateway/routing/clientcert.py).
        self.client_certs: dict[str, Any] = {}
        self._backends = backends
        self._clusters = clusters
        self._rng = rng or random.Random()

    def route(self, request: RequestView) -> RouteDecision | None:
        vhost = self._exact.get(request.host)
        if vhost is None:
            host = normalize_request_host(request.host)
            if self._www:
                redirect = self._www.get(host)
                if redirect is not None and host not in self._exact:
                    return redirect.apply(request)
            vhost = self._hosts.find(host)
            if vhost is None:
                return self._default
        path = request.path
        mark = path.find("?")
        if mark >= 0:
            path = path[:mark]
        route = vhost.paths.match(path)
        if route is None:
            route = vhost.default
            if route is None:
                return self._default
        if route.static:
            return route.primary[0][1].decision
        return route.decide(request, self._rng, self._clusters)

    def backends(self) -> dict[BackendRef, BackendPolicy]:
        """Every backend any route can send to (mirrors and fallbacks included)."""
        return dict(self._backends)

    def describe(self) -> list[dict]:
        """The table as JSON-ready dicts for the admin /routes endpoint."""
        out: list[dict] = []
        for vhost in sorted(self._hosts.hosts(), key=lambda v: v.name):
            routes = sorted(vhost.paths.values(), key=lambda r: (r.path, r.path_type))
            if vhost.default is not None:
                routes.append(vhost.default)
            out.extend(self._describe_route(vhost.name, r) for r in routes)
        return out

    def describe_default(self) -> dict | None:
        """The global default backend, for /routes."""
        d = self._default
        return None if d is None else {"route": d.route_name, **ref_json(d.backend)}

    def describe_aliases(self) -> dict[str, str]:
        """server-alias names and the host whose rules serve them, for /routes."""
        return {a: v.name for a, v in sorted(self._hosts.aliases.items())}

    def describe_passthrough(self) -> list[dict]:
        """The ssl-passthrough hosts, for /routes."""
        return [{"host": h, **ref_json(self.passthrough[h])} for h in sorted(self.passthrough)]

    def describe_www(self) -> list[dict]:
        """The from-to-www redirects, for /routes."""
        return [self._www[h].describe(h) for h in sorted(self._www)]

    def _describe_route(self, host: str, route: Route) -> dict:
        main = route.primary[0][1].decision
        previous = 0.0
        backends = []
        for cumulative, choice in route.primary:
            ref = choice.decision.backend
            backends.append({"weight": round(cumulative - previous, 6), **ref_json(ref),
                             "policy": policy_json(self._backends[ref])})
            previous = cumulative
        canary = None
        if route.canary is not None and route.canary_choice is not None:
            ref = route.canary_choice.decision.backend
            canary = {"ingress": route.canary_ingress, **route.canary.describe(),
                      "backend": {**ref_json(ref), "policy": policy_json(self._backends[ref])},
                      "affinity": _affinity_json(route.canary_choice.decision.affinity)}
        return {
            "host": host or "*",
            "path": route.path,
            "pathType": route.path_type or "defaultBackend",
            "regex": route.use_regex,
            "ingress": route.ingress,
            "route": main.route_name,
            "backends": backends,
            "canary": canary,
            "clusterRouting": None if not route.routing.active else {
                "header": route.routing.header,
                "matches": [{"header": h, "value": v, "cluster": c}
                            for h, v, c in route.routing.matches],
                "strict": route.routing.strict},
            "mirrors": [{**{k: v for k, v in asdict(m).items() if k != "backend"},
                         "backend": ref_json(m.backend) if m.backend else None}
                        for m in main.mirrors],
            "retry": asdict(main.retry),
            "timeouts": asdict(main.timeouts),
            "upstreamHost": main.upstream_host,
            "setHeaders": dict(main.set_headers),
            "rewrite": route.rewriter.describe() if route.rewriter else None,
            "redirect": _redirect_json(route, main),
            "httpsRedirect": route.https.describe() if route.https is not None else None,
            "affinity": _affinity_json(main.affinity),
            "allowSourceRange": route.allow.describe() if route.allow is not None else None,
            "cors": main.cors.describe if main.cors is not None else None,
            "rateLimit": main.rate_limit.describe() if main.rate_limit is not None else None,
            "sendRate": {"bytesPerSecond": main.send_rate, "after": main.send_rate_after}
            if main.send_rate else None,
            "errors": describe_errors(main),
            "externalAuth": main.auth.describe if main.auth is not None else None,
            "basicAuth": main.basic_auth.describe if main.basic_auth is not None else None,
            "clientCertificates": main.client_cert.describe() if main.client_cert is not None else None,
            "backendProtocol": "HTTPS" if main.upstream_tls else "HTTP",
            "proxySsl": _proxy_ssl_json(main.tls_profile),
            "accessLog": main.access_log,
            "responseRewrite": main.response_rewrite.describe()
            if main.response_rewrite is not None else None,
        }


def _proxy_ssl_json(p: UpstreamTLS | None) -> dict | None:
    if p is None:
        return None
    return {"secret": "/".join(p.secret), "verify": p.verify, "serverName": p.server_name,
            "sni": p.sni, "protocols": [p.min_version, p.max_version], "ciphers": p.ciphers,
            "denied": p.broken}


def _affinity_json(affinity: SessionAffinity | None) -> dict | None:
    if affinity is None:
        return None
    return {"mode": "persistent" if affinity.persistent else "balanced", **asdict(affinity)}


def _redirect_json(route: Route, main: RouteDecision) -> dict | None:
    if route.app_root is not None:  # the Location is built per request from the Host
        return {"status": 302, "location": f"$scheme://$http_host{route.app_root}"}
    if main.redirect is not None:
        return {"status": main.redirect.status, "location": main.redirect.location}
    return None


def ref_json(ref: BackendRef) -> dict:
    return {"backend": str(ref), "namespace": ref.namespace, "service": ref.service,
            "port": ref.port, "cluster": ref.cluster, "subset": dict(ref.subset)}
