"""Ingress + IngressClass objects + annotations -> RouteTable (pure; no I/O, no clock).

Ingresses are processed oldest first (creationTimestamp, then namespace/name, as
ingress-nginx sorts them): rules for the same host merge; on a duplicate host + path +
pathType the oldest Ingress wins and the newer rule is reported. Canary Ingresses merge
afterwards into the main rule with the identical host, path and pathType. `app-root` is an
Exact "/" route of its host that answers with the redirect (nginx: `if ($uri = /)`).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from gateway.types import BackendPolicy, BackendRef, MirrorPolicy, RouteDecision

from .affinity import bind_affinity, canary_affinity
from .aliases import install_aliases
from .allow import AllowCheck
from .classes import select_ingresses
from .clientcert import install_client_certs
from .errors import bind_errors, global_default_backend
from .ingress import HC_TLS_PROFILE, Parsed, parse_ingress
from .matching import EXACT, HostTable, VirtualHost
from .options import BuildOptions
from .passthrough import collect_passthrough
from .policy import Context, build_policy
from .proxyssl import bind_server_name
from .ratelimit import RateLimit, RateZones
from .rewrite import install_rewriters
from .table import Choice, Route, RouteTable
from .tls import install_https_redirects
from .values import Problem
from .www import FROM_TO_WWW_KEY, www_redirects

#: Which annotation sets a policy field (to name it in conflict reports).
_FIELD_ANNOTATION = {
    "algorithm": "load-balance", "hash_by": "upstream-hash-by",
    "cluster_weights": "cluster-weights", "priority_pools": "cluster-priority",
    "graded_spillover": "priority-spillover", "panic_threshold": "panic-threshold",
    "overprovisioning_factor": "overprovisioning-factor",
}


def build_route_table(ingresses: list[dict], ingress_classes: list[dict],
                      options: BuildOptions | None = None,
                      rng: random.Random | None = None) -> tuple[RouteTable, list[Problem]]:
    """Compile our Ingresses into a RouteTable; every ignored part comes back as a Problem.
    `rng`: the table's random source (seeded in tests)."""
    o = options if options is not None else BuildOptions()
    default_ref, unusable = global_default_backend(o.default_backend, o.services)
    builder = _Builder(o, default_ref)
    ours, builder.problems = select_ingresses(
        ingresses, ingress_classes, class_name=o.class_name, controller=o.controller,
        accept_classless=o.accept_classless)
    if unusable:
        builder.problem("-", unusable)
    if o.reuse is not None:  # what every parse depends on, besides its own lookups
        o.reuse.begin((o.clusters, default_ref, o.auth_scope))
    for key, ing in ours:
        try:
            builder.parse(ing, key)
        except Exception as exc:  # item 6: one bad object never takes the gateway down
            builder.problems.append(Problem(key, None, f"unreadable ({exc!r}); ignored"))
    builder.add_mains()
    install_aliases(builder.hosts, [(p.key, p.hosts, p.aliases) for p in builder.parsed if p.aliases],
                    builder.problem)
    builder.add_canaries()
    client_certs = install_client_certs(
        builder.hosts, [(p.key, p.hosts, p.settings.client_cert) for p in builder.parsed
                        if p.settings.client_cert is not None], builder.problem)
    install_https_redirects(builder.hosts, frozenset(o.tls_hosts), o.https_port)
    table = builder.finish(rng)
    table.client_certs = client_certs
    if o.reuse is not None:
        o.reuse.end()
    return table, builder.problems


class _Builder:
    def __init__(self, options: BuildOptions, default_ref: BackendRef | None) -> None:
        self.clusters = options.clusters
        self.default_ref = default_ref  # --default-backend-service
        self.rate_zones = options.rate_zones if options.rate_zones is not None else RateZones()
        self.rate_limits: dict[str, RateLimit] = {}  # Ingress -> its zone's limit, this build
        self.auth_scope = options.auth_scope  # global-auth-*, no-auth-locations
        #: What parsing consults (each Ingress's namespace goes in as it is parsed).
        self.context = Context("", options.clusters, options.services, default_ref,
                               options.auth_scope, options.configmap)
        self.reuse = options.reuse
        self.allow_passthrough = options.ssl_passthrough  # --enable-ssl-passthrough
        self.passthrough: dict[str, tuple[str, BackendRef]] = {}  # host -> (Ingress, backend)
        self.problems: list[Problem] = []
        self.parsed: list[Parsed] = []
        self.hosts: HostTable[Route] = HostTable()
        self.index: dict[tuple[str, str, str], Route] = {}
        self.fields: dict[BackendRef, dict[str, Any]] = {}
        self.owners: dict[tuple[BackendRef, str], str] = {}
        #: Hosts in regex mode -> the annotation that turned it on (first one).
        self.regex_hosts: dict[str, str] = {}
        #: host -> (Ingress key, app-root, a decision of that Ingress's rule on the host).
        self.app_roots: dict[str, tuple[str, str, RouteDecision]] = {}

    def problem(self, key: str, message: str, annotation: str | None = None) -> None:
        self.problems.append(Problem(key, annotation, message))

    # -- each Ingress ------------------------------------------------------------------------

    def parse(self, ing: dict, key: str) -> None:
        """Parse the Ingress (or reuse its last parse), then what spans Ingresses."""
        parsed = (self.reuse.parse(ing, key, self.context) if self.reuse is not None
                  else parse_ingress(ing, key, self.context))
        self.problems += parsed.problems
        limit = parsed.settings.rate_limit  # the zone's counters outlive the build
        if limit is not None:
            self.rate_limits[key] = self.rate_zones.limit(parsed.zone, limit)
        if parsed.passthrough is not None:
            collect_passthrough(parsed.passthrough, parsed.rules, self.allow_passthrough,
                                self.passthrough, key, self.problem)
        self.parsed.append(parsed)

    # -- main rules --------------------------------------------------------------------------

    def add_mains(self) -> None:
        catch_all_owner: Parsed | None = None
        for parsed in self.parsed:
            if parsed.canary is not None:
                continue
            for host in parsed.hosts:
                self.hosts.get_or_create(host)
            for host, path, path_type, ref in parsed.rules:
                route = self._route(parsed, host, path, path_type, ref)
                paths = self.hosts.get_or_create(host).paths
                old = (paths.add_exact(path, route) if path_type == EXACT
                       else paths.add_prefix(path, route))
                if old is not None:
                    self.problem(parsed.key, f"{host or '*'}{path} ({path_type}) is already "
                                 f"served by {old.ingress} (the oldest Ingress wins); "
                                 "rule ignored")
                    continue
                self.index[(host, path, path_type)] = route
                self._note_rewrite(parsed, host, route)
            if parsed.default_ref is None:
                continue
            if not parsed.has_rules:
                if catch_all_owner is None:
                    catch_all_owner = parsed
                else:
                    self.problem(parsed.key, "defaultBackend: the catch-all is already served "
                                 f"by {catch_all_owner.key} (oldest wins); ignored")
                continue
            for host in dict.fromkeys(parsed.hosts):
                vhost = self.hosts.get_or_create(host)
                if vhost.default is None:
                    vhost.default = self._route(parsed, host, "", "", parsed.default_ref)
        if catch_all_owner is not None:
            vhost = self.hosts.get_or_create("")
            vhost.default = self._route(catch_all_owner, "", "", "", catch_all_owner.default_ref,
                                        catch_all=True)

    def _note_rewrite(self, parsed: Parsed, host: str, route: Route) -> None:
        """Regex mode for the host (use-regex, or a rewritten path) and its app-root."""
        rewrite = parsed.settings.rewrite
        if parsed.settings.use_regex:
            self.regex_hosts.setdefault(host, "nginx.ingress.kubernetes.io/use-regex")
        if rewrite.needs_rewrite(route.path) and rewrite.target_key:
            self.regex_hosts.setdefault(host, rewrite.target_key)
        if rewrite.app_root is None:
            return
        old = self.app_roots.get(host)
        if old is None:
            self.app_roots[host] = (parsed.key, rewrite.app_root, route.primary[0][1].decision)
        elif old[0] != parsed.key and old[1] != rewrite.app_root:
            self.problem(parsed.key, f"{host or '*'}: app-root {old[1]!r} of {old[0]} already "
                         "applies to this host (the oldest Ingress wins); ignored here",
                         rewrite.app_root_key)

    def _route(self, parsed: Parsed, host: str, path: str, path_type: str,
               ref: BackendRef, catch_all: bool = False) -> Route:
        settings = parsed.settings
        # ingress-nginx leaves redirects and rewrites off the catch-all defaultBackend.
        redirect = None if catch_all else settings.rewrite.redirect
        name = f"{parsed.key}|{host}{path}" if path_type else f"{parsed.key}|{host}(default)"
        weighted = list(parsed.destinations) or [(100, ref)]
        mirrors: tuple[MirrorPolicy, ...] = settings.mirrors
        if redirect is not None:  # nginx returns before the mirror phase: nothing to mirror
            mirrors = ()
        elif settings.mirror_cluster is not None:
            cluster, percentage = settings.mirror_cluster
            shadow = replace(weighted[0][1], cluster=cluster)
            mirrors += (MirrorPolicy(backend=shadow, percentage=percentage, tls=settings.upstream_tls,
                                     tls_profile=bind_server_name(settings.tls_profile, shadow)
                                     if settings.upstream_tls else None),)
        refs = [r for _, r in weighted]
        auth, basic_auth = settings.auth, settings.basic_auth
        if self.auth_scope.exempts(path or "/"):  # no-auth-locations; a denial stays
            auth = auth if auth is not None and auth.broken is not None else None
            basic_auth = basic_auth if basic_auth is not None and basic_auth.broken is not None else None
        primary: list[tuple[float, Choice]] = []
        cumulative = 0.0
        for weight, target in weighted:
            cumulative += weight
            self._merge_fields(parsed, target)
            decision = RouteDecision(
                backend=target, route_name=name,
                fallbacks=tuple(r for r in refs if r != target),
                retry=settings.retry, timeouts=settings.timeouts, mirrors=mirrors,
                upstream_host=settings.upstream_host, set_headers=settings.set_headers,
                redirect=redirect, affinity=bind_affinity(parsed.affinity.affinity, target, path),
                max_body=settings.max_body, cors=settings.cors, rate_limit=self.rate_limits.get(parsed.key),
                send_rate=settings.send_rate[0], send_rate_after=settings.send_rate[1],
                auth=auth, basic_auth=basic_auth, upstream_tls=settings.upstream_tls,
                tls_profile=bind_server_name(settings.tls_profile, target) if settings.upstream_tls
                else None, access_log=settings.access_log,
                response_rewrite=settings.response_rewrite)
            primary.append((cumulative, Choice(bind_errors(decision, parsed.errors, parsed.key))))
        return Route(parsed.key, host, path, path_type, primary,
                     routing=settings.cluster_routing,
                     rewrite=settings.rewrite if path_type else None,
                     ssl=None if catch_all else settings.ssl_redirect, source=settings.source)

    def _merge_fields(self, parsed: Parsed, ref: BackendRef) -> None:
        """Service-scoped policy: the oldest Ingress's explicit value wins per field."""
        merged = self.fields.setdefault(ref, {})
        for name, value in parsed.fields.items():
            if name == HC_TLS_PROFILE:  # the pod's name to check is the backend's own
                value = bind_server_name(value, ref)
            owner = self.owners.get((ref, name))
            if owner is None:
                merged[name] = value
                self.owners[(ref, name)] = parsed.key
            elif merged[name] != value and owner != parsed.key:
                annotation = _FIELD_ANNOTATION.get(name, name.replace("_", "-"))
                self.problem(parsed.key, f"backend {ref}: conflicts with the value set by "
                             f"{owner} (the older Ingress wins); ignored for this backend",
                             annotation)
                self.owners[(ref, name)] = owner  # report once per field

    # -- canaries ----------------------------------------------------------------------------

    def add_canaries(self) -> None:
        for parsed in self.parsed:
            if parsed.canary is None:
                continue
            if parsed.default_ref is not None:
                catch_all = self.hosts.catch_all
                if parsed.has_rules or catch_all is None or catch_all.default is None:
                    self.problem(parsed.key, "defaultBackend of a canary merges only into the "
                                 "catch-all defaultBackend of a rule-less main Ingress; ignored")
                else:
                    self._merge_canary(parsed, catch_all.default, parsed.default_ref, "")
            for host, path, path_type, ref in parsed.rules:
                route = self.index.get((host, path, path_type))
                if route is None:
                    self.problem(parsed.key, f"canary rule {host or '*'}{path} ({path_type}) "
                                 "has no main rule with the same host, path and pathType; "
                                 "ignored")
                    continue
                self._merge_canary(parsed, route, ref, f"{host}{path}")

    def _merge_canary(self, parsed: Parsed, route: Route, ref: BackendRef, where: str) -> None:
        shown = where or "(default)"
        if route.canary is not None:
            self.problem(parsed.key, f"canary for {shown}: {route.canary_ingress} already "
                         "applies (one canary per rule, the oldest wins); ignored")
            return
        refs = tuple(c.decision.backend for _, c in route.primary)
        if ref in refs:
            self.problem(parsed.key, f"canary for {shown}: backend {ref} is the main rule's "
                         "own (add target-cluster or service-subset); ignored")
            return
        self._merge_fields(parsed, ref)
        main = route.primary[0][1].decision
        # the main line, then what it falls back to (its default-backend)
        fallbacks = refs + tuple(f for f in main.fallbacks if f not in refs and f != ref)
        decision = replace(main, backend=ref, fallbacks=fallbacks, canary=True,
                           route_name=f"{parsed.key}|{where or '(default)'}",
                           set_headers=parsed.settings.set_headers,
                           tls_profile=bind_server_name(main.tls_profile, ref),
                           affinity=canary_affinity(main.affinity, parsed.affinity, ref, route.path))
        route.canary, route.canary_ingress = parsed.canary, parsed.key
        route.canary_choice = Choice(decision)

    # -- finishing ---------------------------------------------------------------------------

    def finish(self, rng: random.Random | None) -> RouteTable:
        install_rewriters(self.hosts, self.regex_hosts, self.problem)
        for vhost in self.hosts.hosts():
            if vhost.name in self.app_roots:
                self._install_app_root(vhost)
        backends: dict[BackendRef, BackendPolicy] = {}
        for vhost in self.hosts.hosts():
            routes = vhost.paths.values() + ([vhost.default] if vhost.default else [])
            for route in routes:
                if route.client_cert is not None:  # before the checks that derive answers
                    route.bind_client_cert()
                if route.source is not None:
                    route.allow = AllowCheck(route.source, route.primary[0][1].decision)
                route.finish(self.clusters)
                for decision in route.decisions():
                    refs = [decision.backend, *decision.fallbacks]
                    refs += [m.backend for m in decision.mirrors if m.backend is not None]
                    for ref in refs:
                        if ref not in backends:
                            backends[ref] = self._policy(ref)
        for _, ref in self.passthrough.values():
            if ref not in backends:
                backends[ref] = self._policy(ref)
        default = None
        if self.default_ref is not None:  # requests no rule matches (ingress-nginx's upstream-default-backend)
            default = RouteDecision(backend=self.default_ref, route_name="-|(default-backend)")
            if self.default_ref not in backends:
                backends[self.default_ref] = self._policy(self.default_ref)
        return RouteTable(self.hosts, backends, self.clusters, rng, www=self._www_redirects(),
                          default=default,
                          passthrough={h: ref for h, (_, ref) in self.passthrough.items()})

    def _www_redirects(self) -> dict:
        """from-to-www-redirect (gateway/routing/www.py)."""
        flagged = [(p.key, p.hosts) for p in self.parsed if p.settings.from_to_www]
        made, skipped = www_redirects(flagged, self.hosts)
        for key, message in skipped:
            self.problem(key, message, FROM_TO_WWW_KEY)
        return made

    def _install_app_root(self, vhost: VirtualHost[Route]) -> None:
        """app-root answers a request for exactly "/" on the host, before any path rule."""
        key, app_root, decision = self.app_roots[vhost.name]
        base = replace(decision, route_name=f"{key}|{vhost.name}/(app-root)", mirrors=())
        vhost.paths.exact["/"] = Route(key, vhost.name, "/", EXACT, [(100.0, Choice(base))],
                                       app_root=app_root)

    def _policy(self, ref: BackendRef) -> BackendPolicy:
        """Base Service fields, then the subset's, then this exact backend's."""
        fields: dict[str, Any] = {}
        fields.update(self.fields.get(BackendRef(ref.namespace, ref.service, ref.port), {}))
        if ref.cluster is not None:
            fields.update(self.fields.get(replace(ref, cluster=None), {}))
        fields.update(self.fields.get(ref, {}))
        if ref.cluster is not None:
            # One cluster only: weights and pools across clusters would only starve it.
            for name in ("cluster_weights", "priority_pools", "graded_spillover"):
                fields.pop(name, None)
        return self.reuse.policy(ref, fields) if self.reuse is not None else build_policy(fields)
