"""Canary rules: ingress-nginx's decision procedure (balancer.lua
`route_to_alternative_balancer`, digest 2.2) ported literally, with MSE's query and
cookie-value extensions; MSE subsets (`service-subset`/`subset-labels`) and the
weighted `destination` list.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.types import BackendRef
from gateway.variables import cookie_value

from .policy import Context
from .settings import first_port
from .values import Annotations

_NAME = re.compile(r"^[A-Za-z0-9_.~/-]+$")  # ingress-nginx BasicCharsRegex, roughly
SUBSET_LABEL_PREFIX = "opensergo.io/canary-"
_SVC_SUFFIXES = (".svc.cluster.local", ".svc.clusterset.local", ".svc")
CANARY_KEYS = ("canary-by-header", "canary-by-header-value", "canary-by-header-pattern",
               "canary-by-cookie", "canary-by-cookie-value", "canary-by-query",
               "canary-by-query-value", "canary-by-query-pattern", "canary-weight",
               "canary-weight-total")


@dataclass(frozen=True)
class CanaryRule:
    """One canary's traffic-shaping policy (nginx `traffic_shaping_policy` + MSE fields)."""

    header: str | None = None  # lower-case, '_' as '-' (nginx $http_<name> lookup)
    header_value: str | None = None
    header_pattern: re.Pattern[str] | None = None
    query: str | None = None
    query_value: str | None = None
    query_pattern: re.Pattern[str] | None = None
    cookie: str | None = None  # lower-case: nginx matches cookie names case-insensitively
    cookie_value: str | None = None
    weight: int = 0
    weight_total: int = 100

    def chooses_canary(self, headers: Mapping[str, str], query: str, rng: random.Random) -> bool:
        """True: serve this request from the canary. Header, then query (MSE: "header or
        query > cookie > weight"), then cookie, then weight; `never` stops."""
        if self.header is not None:
            value = headers.get(self.header)
            if value is not None:
                verdict = _match(value, self.header_value, self.header_pattern)
                if verdict is not None:
                    return verdict
        if self.query is not None and query:
            value = query_param(query, self.query)
            if value is not None:
                verdict = _match(value, self.query_value, self.query_pattern)
                if verdict is not None:
                    return verdict
        if self.cookie is not None:
            raw = headers.get("cookie")
            value = cookie_value(raw, self.cookie) if raw else None
            if value is not None:
                verdict = _match(value, self.cookie_value, None)
                if verdict is not None:
                    return verdict
        # nginx: math.random(total) <= weight, total = weight-total only when > 100.
        total = self.weight_total if self.weight_total > 100 else 100
        if self.weight <= 0:
            return False
        if self.weight >= total:
            return True
        return rng.random() * total < self.weight

    def describe(self) -> dict:
        return {
            "header": self.header, "headerValue": self.header_value,
            "headerPattern": self.header_pattern.pattern if self.header_pattern else None,
            "query": self.query, "queryValue": self.query_value,
            "queryPattern": self.query_pattern.pattern if self.query_pattern else None,
            "cookie": self.cookie, "cookieValue": self.cookie_value,
            "weight": self.weight, "weightTotal": self.weight_total,
        }


def _match(value: str, exact: str | None, pattern: re.Pattern[str] | None) -> bool | None:
    """True/False decides; None falls through to the next rule (nginx semantics: with a
    value or pattern set, 'always'/'never' lose their special meaning)."""
    if exact:
        return True if value == exact else None
    if pattern is not None:
        return True if pattern.search(value) else None  # ngx.re.match: unanchored
    if value == "always":
        return True
    if value == "never":
        return False
    return None


def query_param(query: str, name: str) -> str | None:
    """The first raw (undecoded) value of `name`; names are case-sensitive (Envoy/MSE)."""
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return None


def parse_canary(ann: Annotations) -> tuple[bool, CanaryRule | None]:
    """(is a canary Ingress, its rule). Invalid values default as ingress-nginx does."""
    enabled = bool(ann.boolean("canary"))
    kw: dict = {}
    normalize = {"header": lambda n: n.lower().replace("_", "-"),  # nginx $http_<name>
                 "query": lambda n: n,  # Envoy/MSE: case-sensitive
                 "cookie": str.lower}  # nginx $cookie_<name>: case-insensitive
    for key, attr in (("canary-by-header", "header"), ("canary-by-query", "query"),
                      ("canary-by-cookie", "cookie")):
        found = ann.string(key)
        if found is None:
            continue
        if _NAME.match(found[1]):
            kw[attr] = normalize[attr](found[1])
        else:
            ann.problem(found[0], f"{found[1]!r} is not a valid name; ignored")
    for key, attr in (("canary-by-header-value", "header_value"),
                      ("canary-by-query-value", "query_value"),
                      ("canary-by-cookie-value", "cookie_value")):
        found = ann.string(key)
        if found is not None:
            kw[attr] = found[1]
    for key, attr in (("canary-by-header-pattern", "header_pattern"),
                      ("canary-by-query-pattern", "query_pattern")):
        found = ann.string(key)
        if found is not None:
            try:
                kw[attr] = re.compile(found[1])
            except re.error as exc:
                ann.problem(found[0], f"invalid regex ({exc}); ignored")
    weight = ann.integer("canary-weight")
    if weight is not None:
        kw["weight"] = weight
    total = ann.integer("canary-weight-total")
    if total is not None:
        if total > 0:
            kw["weight_total"] = total
        else:
            ann.problem(ann.lookup("canary-weight-total")[0], "must be > 0; 100 is used")
    if not enabled:
        configured = [ann.lookup(k)[0] for k in CANARY_KEYS if ann.has(k)]
        if configured:
            ann.problem(configured[0], "canary configured but not enabled (canary: \"true\" "
                        "missing); the canary annotations are ignored")
        return False, None
    return True, CanaryRule(**kw)


def parse_subset(ann: Annotations) -> tuple[tuple[str, str], ...]:
    """MSE service-subset (+ subset-labels) as a pod-label selector; () = whole Service."""
    found = ann.lookup("service-subset")
    labels = ann.string("subset-labels")
    if found is None:
        if labels is not None:
            ann.problem(labels[0], "needs service-subset; ignored")
        return ()
    if labels is not None:
        pairs: dict[str, str] = {}
        for line in labels[1].replace(",", "\n").splitlines():
            parts = line.replace("=", " ").replace(":", " ", 1).split() if line.strip() else []
            if not parts:
                continue
            if len(parts) != 2:
                ann.problem(labels[0], f"line {line.strip()!r}: expected '<key> <value>'; "
                            "the subset is ignored (whole Service)")
                return ()
            pairs[parts[0]] = parts[1]
        return tuple(sorted(pairs.items()))
    name = found[1].strip()
    if name in ("", "base"):
        return ()  # MSE "base" also excludes canary-labelled pods: not expressible, see README
    return ((SUBSET_LABEL_PREFIX + name, name),)


def parse_destination(ann: Annotations, ctx: Context) -> tuple[tuple[int, BackendRef], ...]:
    """MSE `destination`: lines `[<w>%] <svc>.<ns>.svc.cluster.local[:<port>] [<subset>]`.

    As in Higress, any bad line or a weight sum other than 100 ignores the annotation.
    A subset naming a member cluster pins that cluster; "base" means the whole Service;
    another name X selects pods labelled opensergo.io/canary-X=X (as service-subset).
    """
    found = ann.string("destination")
    if found is None:
        return ()
    full, text = found
    out: list[tuple[int, BackendRef]] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        entry = _destination_line(fields, ctx)
        if isinstance(entry, str):
            ann.problem(full, f"line {line.strip()!r}: {entry}; ignored")
            return ()
        out.append(entry)
    total = sum(w for w, _ in out)
    if total != 100:
        ann.problem(full, f"weights add up to {total}, not 100; ignored")
        return ()
    return tuple(out)


def _destination_line(fields: list[str], ctx: Context) -> tuple[int, BackendRef] | str:
    weight, index = 100, 0
    if fields[0].endswith("%"):
        if not fields[0][:-1].isdigit():
            return f"bad weight {fields[0]!r}"
        weight, index = int(fields[0][:-1]), 1
    rest = fields[index:]
    if not rest or len(rest) > 2:
        return "expected [<weight>%] <service host>[:<port>] [<subset>]"
    host, colon, port_text = rest[0].rpartition(":")
    if not colon:
        host, port_text = rest[0], ""
    suffix = next((s for s in _SVC_SUFFIXES if host.endswith(s)), None)
    parts = host[: -len(suffix)].split(".") if suffix else []
    if len(parts) != 2 or not all(parts):
        return f"{host!r} is not <service>.<namespace>.svc.cluster.local"
    name, ns = parts
    if port_text and not port_text.isdigit():
        return f"bad port {port_text!r}"
    port = int(port_text) if port_text else first_port(ctx, ns, name)
    if port is None:
        return f"no port given and Service {ns}/{name} is not known"
    subset_name = rest[1] if len(rest) == 2 else ""
    if subset_name and subset_name in ctx.clusters:
        return weight, BackendRef(ns, name, port, cluster=subset_name)
    if subset_name in ("", "base"):
        return weight, BackendRef(ns, name, port)
    return weight, BackendRef(ns, name, port, subset=((SUBSET_LABEL_PREFIX + subset_name,
                                                       subset_name),))
