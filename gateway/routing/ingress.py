"""One Ingress -> Parsed: its annotations and rules, read on their own (no other Ingress is
consulted), with the Problems found on the way. What spans Ingresses (merging rules,
canaries, ssl-passthrough hosts, rate-limit zones) is the builder's (build.py); keeping
this part per Ingress is what lets a rebuild reuse it (reuse.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from gateway.types import BackendRef

from .affinity import CANARY_AFFINITY_KEYS, AffinitySettings, parse_affinity
from .aliases import parse_aliases
from .buffering import BUFFERING_KEYS, check_buffering
from .canary import CANARY_KEYS, CanaryRule, parse_canary, parse_destination, parse_subset
from .errors import NO_ERRORS, ErrorSettings, parse_errors
from .matching import IMPL, host_error, path_error
from .passthrough import passthrough_key
from .policy import HC_PREFIX, Context, check_cluster, parse_policy_fields
from .settings import RouteSettings, backend_ref, parse_header_control, parse_settings
from .values import Annotations, Problem

#: Annotations a canary Ingress honours (nginx: canary + balancing; plus MSE subsets, MSE
#: header control, and our backend-policy and target-cluster annotations).
CANARY_ALLOWED = frozenset({
    "canary", *CANARY_KEYS, "load-balance", "upstream-hash-by", "service-subset",
    "subset-labels", "target-cluster", "request-header-control-add",
    "request-header-control-update", "cluster-weights", "cluster-priority",
    "priority-spillover", "overprovisioning-factor", "panic-threshold",
    "health-check-path", "health-check-interval", "health-check-timeout",
    "health-check-healthy-threshold", "health-check-unhealthy-threshold",
    "health-check-host", "health-check-statuses", "outlier-consecutive-5xx",
    "outlier-consecutive-gateway-failure", "outlier-base-ejection-time",
    "outlier-max-ejection-time", "outlier-max-ejection-percent", "outlier-interval",
    "outlier-always-eject-one-host",
    *CANARY_AFFINITY_KEYS,
    *BUFFERING_KEYS,  # (nothing to apply anywhere: see buffering.py)
})
HC_TLS_PROFILE = HC_PREFIX + "tls_profile"


@dataclass
class Parsed:
    """Read-only once parsed: a rebuild may hand the same one to the next table."""

    key: str
    canary: CanaryRule | None
    fields: dict[str, Any]
    settings: RouteSettings
    destinations: tuple[tuple[int, BackendRef], ...]
    problems: list[Problem]  # what parsing this Ingress found wrong, in order
    hosts: list[str] = field(default_factory=list)
    rules: list[tuple[str, str, str, BackendRef]] = field(default_factory=list)
    default_ref: BackendRef | None = None
    has_rules: bool = False  # spec.rules non-empty (even if every rule was invalid)
    affinity: AffinitySettings = AffinitySettings()
    errors: ErrorSettings = NO_ERRORS  # default-backend + custom-http-errors
    zone: str = ""  # the rate-limit zone's name: nginx names it after namespace, name, uid
    aliases: tuple[str, ...] = ()  # server-alias (gateway/routing/aliases.py)
    passthrough: str | None = None  # the ssl-passthrough annotation's key, when it is on


def parse_ingress(ing: dict, key: str, build: Context) -> Parsed:
    """`build`: what the build consults; parsing puts the Ingress's namespace in."""
    meta, spec = ing.get("metadata") or {}, ing.get("spec") or {}
    ns = meta.get("namespace") or "default"
    problems: list[Problem] = []
    ann = Annotations(key, meta.get("annotations"), problems)
    ctx = Context(ns, build.clusters, build.services, build.default_backend, build.auth,
                  build.configmap)
    is_canary, rule = parse_canary(ann)
    subset = parse_subset(ann)
    target = ann.string("target-cluster")
    cluster = target[1] if target and check_cluster(ann, target[0], target[1], ctx) else None
    fields = parse_policy_fields(ann, ctx)
    if is_canary:
        settings = RouteSettings(set_headers=parse_header_control(ann))
        destinations: tuple = ()
    else:
        settings = parse_settings(ann, ctx)
        destinations = parse_destination(ann, ctx)
    if settings.tls_profile is not None and fields.get(HC_PREFIX + "tls"):
        fields[HC_TLS_PROFILE] = settings.tls_profile  # probes connect as requests do
    affinity = parse_affinity(ann, canary=is_canary)
    errors = NO_ERRORS if is_canary else parse_errors(ann, ctx)
    check_buffering(ann)
    ann.unknown_keys(is_canary, CANARY_ALLOWED)
    parsed = Parsed(key, rule, fields, settings, destinations, problems, affinity=affinity,
                    errors=errors, zone=f"{key}|{meta.get('uid') or ''}")

    def problem(message: str) -> None:
        problems.append(Problem(key, None, message))

    def narrow(ref: BackendRef) -> BackendRef:
        return replace(ref, subset=subset or ref.subset, cluster=cluster or ref.cluster)

    default = spec.get("defaultBackend")
    if default is not None:
        ref = backend_ref(default, ctx)
        if isinstance(ref, str):
            problem(f"defaultBackend: {ref}; ignored")
        else:
            parsed.default_ref = narrow(ref)
    parsed.has_rules = bool(spec.get("rules"))
    if not parsed.has_rules and parsed.default_ref is not None:
        for full in settings.rewrite.keys():  # ingress-nginx skips them on the catch-all
            problems.append(Problem(key, full, "not applied to a catch-all defaultBackend; ignored"))
    for rule_obj in spec.get("rules") or []:
        host = str(rule_obj.get("host") or "").strip().lower()
        error = host_error(host) if host else None
        if error:
            problem(f"rule host {host!r}: {error}; rule ignored")
            continue
        parsed.hosts.append(host)
        for item in (rule_obj.get("http") or {}).get("paths") or []:
            path_type = item.get("pathType") or IMPL
            path = item.get("path") or ("/" if path_type == IMPL else "")
            error = path_error(path, path_type)
            ref = backend_ref(item.get("backend"), ctx) if not error else error
            if isinstance(ref, str):
                problem(f"{host or '*'} path {path!r}: {ref}; path ignored")
                continue
            parsed.rules.append((host, path, path_type, narrow(ref)))
    if not parsed.rules and parsed.default_ref is None:
        problem("no usable rule and no defaultBackend; nothing to serve")
    if not is_canary:
        parsed.aliases = parse_aliases(ann)
        parsed.passthrough = passthrough_key(ann)
    return parsed
