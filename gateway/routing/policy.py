"""Annotations -> backend policy fields (Service scope) and route settings (rule scope).

Backend-policy annotations are Service-scoped, as in MSE: they apply to the backend
wherever it is used, so `parse_policy_fields` returns only the fields an Ingress set
explicitly; the table merges them oldest Ingress first (a conflicting newer value is
reported and ignored) and builds one `BackendPolicy` per backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import variables
from gateway.types import (
    BackendPolicy,
    BackendRef,
    HealthCheckPolicy,
    OutlierPolicy,
)

from .extauth import AuthScope, ConfigMapLookup
from .values import Annotations, is_dns_label, split_list

#: load-balance values we balance with (types.LbAlgorithm, "hash" aside).
_ALGORITHMS = frozenset({"round_robin", "least_conn", "random", "ewma"})

#: Keys of the explicit-field dict for HealthCheckPolicy / OutlierPolicy sub-fields.
HC_PREFIX = "health_check."
OUTLIER_PREFIX = "outlier."


@dataclass(frozen=True)
class Context:
    """What parsing may consult besides the annotations themselves."""

    namespace: str
    clusters: frozenset[str]
    services: Mapping[tuple[str, str], dict] | None
    #: The gateway's --default-backend-service, resolved (None: not set or unusable).
    default_backend: BackendRef | None = None
    #: The gateway's global-auth-* check and no-auth-locations (gateway/routing/extauth.py).
    auth: AuthScope = AuthScope()
    #: The hub's ConfigMaps (auth-proxy-set-headers); None: there are none.
    configmap: ConfigMapLookup | None = None


def check_cluster(ann: Annotations, full: str, name: str, ctx: Context) -> bool:
    if not is_dns_label(name):
        ann.problem(full, f"{name!r} is not a cluster name; ignored")
        return False
    if ctx.clusters and name not in ctx.clusters:
        known = ", ".join(sorted(ctx.clusters))
        ann.problem(full, f"unknown cluster {name!r} (members: {known}); ignored")
        return False
    return True


def parse_balancing(ann: Annotations, fields: dict[str, Any]) -> None:
    """load-balance and upstream-hash-by (which takes precedence, as in ingress-nginx)."""
    found = ann.string("load-balance")
    if found is not None:
        full, value = found
        algo = value.lower()
        if algo in _ALGORITHMS:
            fields["algorithm"] = algo
        else:
            ann.problem(full, f"unknown algorithm {value!r} (round_robin, least_conn, "
                        "random, ewma); ignored")
    found = ann.string("upstream-hash-by")
    if found is not None:
        full, value = found
        error = hash_key_error(value)
        if error is None:
            fields["algorithm"] = "hash"
            fields["hash_by"] = value
        else:
            ann.problem(full, f"{error}; ignored")


def hash_key_error(template: str) -> str | None:
    """Why an upstream-hash-by text is unusable: nginx variables ($host, ${arg_uid}, ...)
    and literals, at least one variable, every variable one we can compute."""
    if not variables.names(template):
        return f"{template!r} names no variable (e.g. $request_uri, $http_<name>)"
    for name in variables.names(template):
        if not variables.known(name):
            return f"unsupported variable ${name} (supported: {variables.SUPPORTED})"
    return None


def parse_policy_fields(ann: Annotations, ctx: Context) -> dict[str, Any]:
    """The BackendPolicy fields this Ingress sets explicitly (balancing + ours)."""
    fields: dict[str, Any] = {}
    parse_balancing(ann, fields)
    _cluster_weights(ann, ctx, fields)
    _cluster_priority(ann, ctx, fields)
    found = ann.string("priority-spillover")
    if found is not None:
        if found[1] in ("graded", "strict"):
            fields["graded_spillover"] = found[1] == "graded"
        else:
            ann.problem(found[0], f"{found[1]!r}: expected 'strict' or 'graded'; ignored")
    value = ann.number("overprovisioning-factor", low=1.0, high=100.0)
    if value is not None:
        fields["overprovisioning_factor"] = value
    value = ann.number("panic-threshold", low=0.0, high=100.0)
    if value is not None:
        fields["panic_threshold"] = value
    _health_check(ann, fields)
    _outlier(ann, fields)
    return fields


def _cluster_weights(ann: Annotations, ctx: Context, fields: dict[str, Any]) -> None:
    found = ann.string("cluster-weights")
    if found is None:
        return
    full, text = found
    weights: dict[str, int] = {}
    for item in split_list(text):
        name, sep, num = item.partition("=")
        name = name.strip()
        if not sep or not num.strip().isdigit():
            ann.problem(full, f"{item!r}: expected <cluster>=<weight> (weight >= 0); ignored")
            return
        if name in weights:
            ann.problem(full, f"cluster {name!r} listed twice; ignored")
            return
        if not check_cluster(ann, full, name, ctx):
            return
        weights[name] = int(num)
    if not weights or not any(weights.values()):
        ann.problem(full, "needs at least one cluster with a weight > 0; ignored")
        return
    fields["cluster_weights"] = weights


def _cluster_priority(ann: Annotations, ctx: Context, fields: dict[str, Any]) -> None:
    found = ann.string("cluster-priority")
    if found is None:
        return
    full, text = found
    pools: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for pool_text in text.split(";"):
        pool = tuple(split_list(pool_text))
        if not pool:
            ann.problem(full, "empty priority pool (stray ';'); ignored")
            return
        for name in pool:
            if name in seen:
                ann.problem(full, f"cluster {name!r} listed twice; ignored")
                return
            if not check_cluster(ann, full, name, ctx):
                return
            seen.add(name)
        pools.append(pool)
    fields["priority_pools"] = tuple(pools)


def _health_check(ann: Annotations, fields: dict[str, Any]) -> None:
    found = ann.string("health-check-path")
    if found is not None:
        if found[1].startswith("/"):
            fields[HC_PREFIX + "path"] = found[1]
        else:
            ann.problem(found[0], f"path {found[1]!r} must start with '/'; ignored")
    for key, attr in (("health-check-interval", "interval"), ("health-check-timeout", "timeout")):
        value = ann.seconds(key)
        if value is not None:
            fields[HC_PREFIX + attr] = value
    for key, attr in (("health-check-healthy-threshold", "healthy_threshold"),
                      ("health-check-unhealthy-threshold", "unhealthy_threshold")):
        count = ann.integer(key, low=1, high=1000)
        if count is not None:
            fields[HC_PREFIX + attr] = count
    found = ann.string("health-check-host")
    if found is not None:
        fields[HC_PREFIX + "host"] = found[1]
    found = ann.string("health-check-statuses")
    if found is not None:
        statuses = parse_statuses(found[1])
        if statuses is None:
            ann.problem(found[0], f"{found[1]!r}: expected codes or ranges like "
                        "'200,204' or '200-299'; ignored")
        else:
            fields[HC_PREFIX + "expected_statuses"] = statuses
    if https_backend(ann) and any(k.startswith(HC_PREFIX) for k in fields):
        fields[HC_PREFIX + "tls"] = True  # the pods speak TLS only: so does the probe


def https_backend(ann: Annotations) -> bool:
    """`backend-protocol: HTTPS` (any case): the pods speak TLS. Silent; settings.py reports
    the values it does not take."""
    found = ann.lookup("backend-protocol")
    return found is not None and found[1].strip().upper() == "HTTPS"


def _outlier(ann: Annotations, fields: dict[str, Any]) -> None:
    for key, attr in (("outlier-consecutive-5xx", "consecutive_5xx"),
                      ("outlier-consecutive-gateway-failure", "consecutive_gateway_failure")):
        count = ann.integer(key, low=0, high=1_000_000)
        if count is not None:
            fields[OUTLIER_PREFIX + attr] = count
            if attr == "consecutive_gateway_failure":
                # Envoy enforces this detector at 0 % by default; asking for it means "on".
                fields[OUTLIER_PREFIX + "enforcing_consecutive_gateway_failure"] = 100
    for key, attr in (("outlier-base-ejection-time", "base_ejection_time"),
                      ("outlier-max-ejection-time", "max_ejection_time"),
                      ("outlier-interval", "interval")):
        value = ann.seconds(key)
        if value is not None:
            fields[OUTLIER_PREFIX + attr] = value
    count = ann.integer("outlier-max-ejection-percent", low=0, high=100)
    if count is not None:
        fields[OUTLIER_PREFIX + "max_ejection_percent"] = count
    one = ann.boolean("outlier-always-eject-one-host")
    if one is not None:
        fields[OUTLIER_PREFIX + "always_eject_one_host"] = one


def parse_statuses(text: str) -> tuple[int, ...] | None:
    codes: list[int] = []
    for item in split_list(text):
        low, sep, high = item.partition("-")
        if not low.strip().isdigit() or (sep and not high.strip().isdigit()):
            return None
        first, last = int(low), int(high) if sep else int(low)
        if not 100 <= first <= last <= 599:
            return None
        codes.extend(range(first, last + 1))
    return tuple(sorted(set(codes))) or None


def build_policy(fields: Mapping[str, Any]) -> BackendPolicy:
    """A BackendPolicy from explicit fields; health checks stay None unless configured."""
    top = {k: v for k, v in fields.items() if "." not in k}
    hc = {k[len(HC_PREFIX):]: v for k, v in fields.items() if k.startswith(HC_PREFIX)}
    outlier = {k[len(OUTLIER_PREFIX):]: v for k, v in fields.items()
               if k.startswith(OUTLIER_PREFIX)}
    if hc:
        top["health_check"] = HealthCheckPolicy(**hc)
    if outlier:
        top["outlier"] = OutlierPolicy(**outlier)
    if top.get("algorithm") != "hash":
        top.pop("hash_by", None)
    return BackendPolicy(**top)


def policy_json(policy: BackendPolicy) -> dict[str, Any]:
    """A JSON-ready view for /routes (statuses collapsed to keep it readable)."""
    hc = policy.health_check
    return {
        "algorithm": policy.algorithm,
        "hashBy": policy.hash_by,
        "clusterWeights": dict(policy.cluster_weights),
        "priorityPools": [list(pool) for pool in policy.priority_pools],
        "gradedSpillover": policy.graded_spillover,
        "overprovisioningFactor": policy.overprovisioning_factor,
        "panicThreshold": policy.panic_threshold,
        "healthCheck": None if hc is None else {
            "path": hc.path, "interval": hc.interval, "timeout": hc.timeout,
            "healthyThreshold": hc.healthy_threshold,
            "unhealthyThreshold": hc.unhealthy_threshold, "host": hc.host,
            "expectedStatuses": _ranges(hc.expected_statuses), "tls": hc.tls,
            "proxySslSecret": "/".join(hc.tls_profile.secret) if hc.tls_profile else None},
        "outlier": {
            "consecutive5xx": policy.outlier.consecutive_5xx,
            "consecutiveGatewayFailure": policy.outlier.consecutive_gateway_failure,
            "enforcingConsecutiveGatewayFailure":
                policy.outlier.enforcing_consecutive_gateway_failure,
            "baseEjectionTime": policy.outlier.base_ejection_time,
            "maxEjectionTime": policy.outlier.max_ejection_time,
            "maxEjectionPercent": policy.outlier.max_ejection_percent,
            "alwaysEjectOneHost": policy.outlier.always_eject_one_host,
            "interval": policy.outlier.interval},
    }


def _ranges(codes: tuple[int, ...]) -> str:
    out: list[str] = []
    for code in codes:
        if out and "-" not in out[-1] and int(out[-1]) == code - 1:
            out[-1] = f"{out[-1]}-{code}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == code - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{code}"
        else:
            out.append(str(code))
    return ",".join(out)
