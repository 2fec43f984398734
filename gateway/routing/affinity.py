"""Cookie session affinity (ingress-nginx `affinity: cookie`): annotations and the cookie format.

What lives here is pure: parsing one Ingress's affinity annotations into a `SessionAffinity`
(every bad value a named `Problem`, as the rest of routing does), the sticky cookie's value
format shared by the data path and the upstream side, and the affinity steps of
ingress-nginx's canary decision (a request affinitized to the main line stays there, one
affinitized to the canary goes there) that `Route._choose` runs before the canary rules
and the weighted pick.

Wiring (build.py): `parse_affinity` per Ingress; each main decision gets
`bind_affinity(settings.affinity, backend, rule path)`, each canary decision
`canary_affinity(main decision's affinity, canary settings, canary backend, rule path)`;
cluster-pinned variants keep their choice's affinity (same tag). A route with one side
only keeps its static fast path: the prebuilt decision carries the affinity.

The cookie value is `<key>[.<pos>][-<tag>]`, all lower-case hex:
* `key` (16): the endpoint, a hash of `cluster/ip:port`, so every gateway replica agrees;
* `pos` (8): only in `balanced` mode, the session's point on its cluster's hash ring (how
  sessions are redistributed when the cluster scales up; see gateway/upstream/affinity.py);
* `tag` (8): the backend (Service port, subset, cluster) that issued it, for the canary steps.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal, TypeVar

from gateway.types import BackendRef, Endpoint, SessionAffinity

from .values import Annotations, Problem

#: Every affinity annotation we act on (read under nginx. and mse., nginx first); repeated in
#: values.COMPATIBLE_KEYS (a test checks they agree).
AFFINITY_KEYS = frozenset({
    "affinity", "affinity-mode", "affinity-canary-behavior",
    "session-cookie-name", "session-cookie-path", "session-cookie-domain",
    "session-cookie-max-age", "session-cookie-expires", "session-cookie-samesite",
    "session-cookie-secure", "session-cookie-change-on-failure",
})
#: Honoured on a canary Ingress (its own affinity matters only with `legacy`).
CANARY_AFFINITY_KEYS = AFFINITY_KEYS

DEFAULT_COOKIE = "INGRESSCOOKIE"
CanaryBehavior = Literal["sticky", "legacy"]

# RFC 6265 token characters that ingress-nginx's BasicChars validator also allows.
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9._~-]+$")
# ingress-nginx validates the path with its URL character set; a cookie path starts with '/'.
_COOKIE_PATH = re.compile(r"^/[A-Za-z0-9._~/:,?&=-]*$")
_DOMAIN = re.compile(r"^\.?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SECONDS = re.compile(r"^(0|[1-9][0-9]{0,9})$")
_SAMESITE = {"none": "None", "lax": "Lax", "strict": "Strict"}


T = TypeVar("T")


@dataclass(frozen=True)
class AffinitySettings:
    """What one Ingress says about affinity: the cookie settings (None: no affinity) and,
    on a canary Ingress, how the canary treats the main line's affinity."""

    affinity: SessionAffinity | None = None
    canary_behavior: CanaryBehavior = "sticky"


# ---------------------------------------------------------------------- annotations


def parse_affinity(ann: Annotations, *, canary: bool = False) -> AffinitySettings:
    """The affinity annotations of one Ingress; bad values are recorded in `ann.problems`.

    As ingress-nginx: affinity is on only with `affinity: cookie` (exact); a bad mode,
    canary behaviour, name, path, age or SameSite falls back to the default. Unlike
    ingress-nginx (silent), session-cookie-* without `affinity: cookie` is reported.
    """
    behavior: CanaryBehavior = "sticky"
    found = ann.string("affinity-canary-behavior")
    if found is not None:
        full, value = found
        if not canary:
            ann.problem(full, "only applies to a canary Ingress; ignored")
        elif value in ("sticky", "legacy"):
            behavior = "sticky" if value == "sticky" else "legacy"
        else:
            ann.problem(full, f"{value!r}: expected 'sticky' or 'legacy'; 'sticky' is used")
    found = ann.string("affinity")
    enabled = False
    if found is not None:
        if found[1] == "cookie":
            enabled = True
        else:
            ann.problem(found[0], f"{found[1]!r}: only 'cookie' is supported; ignored")
    if not enabled:
        for key in sorted(AFFINITY_KEYS - {"affinity", "affinity-canary-behavior"}):
            hit = ann.lookup(key)
            if hit is not None:
                ann.problem(hit[0], "session affinity is not enabled "
                            "(affinity: cookie); ignored")
        return AffinitySettings(None, behavior)
    settings = AffinitySettings(_cookie_settings(ann), behavior)
    if canary and behavior == "sticky" and found is not None:
        ann.problem(found[0], "a canary follows the main Ingress's affinity (affinity-canary-"
                    "behavior 'sticky'; 'legacy' uses its own); ignored")
    return settings


def _cookie_settings(ann: Annotations) -> SessionAffinity:
    kw: dict = {}
    found = ann.string("affinity-mode")
    if found is not None:
        if found[1] in ("balanced", "persistent"):
            kw["persistent"] = found[1] == "persistent"
        else:
            ann.problem(found[0], f"{found[1]!r}: expected 'balanced' or 'persistent'; "
                        "'balanced' is used")
    found = ann.string("session-cookie-name")
    if found is not None:
        if _COOKIE_NAME.match(found[1]):
            kw["cookie"] = found[1]
        else:
            ann.problem(found[0], f"{found[1]!r} is not a cookie name; {DEFAULT_COOKIE} is used")
    for key, attr, regex, what in (
            ("session-cookie-path", "path", _COOKIE_PATH, "a cookie path (/...)"),
            ("session-cookie-domain", "domain", _DOMAIN, "a cookie domain")):
        found = ann.string(key)
        if found is not None:
            if regex.match(found[1]):
                kw[attr] = found[1]
            else:
                ann.problem(found[0], f"{found[1]!r} is not {what}; ignored")
    for key, attr in (("session-cookie-max-age", "max_age"), ("session-cookie-expires", "expires")):
        found = ann.string(key)
        if found is not None:
            if _SECONDS.match(found[1]):
                kw[attr] = int(found[1])
            else:
                ann.problem(found[0], f"{found[1]!r} is not a number of seconds; ignored")
    found = ann.string("session-cookie-samesite")
    if found is not None:
        value = _SAMESITE.get(found[1].lower())
        if value is not None:
            kw["samesite"] = value
        else:
            ann.problem(found[0], f"{found[1]!r}: expected None, Lax or Strict; ignored")
    for key, attr in (("session-cookie-secure", "secure"),
                      ("session-cookie-change-on-failure", "change_on_failure")):
        flag = ann.boolean(key)
        if flag is not None:
            kw[attr] = flag
    return SessionAffinity(**kw)


def parse_affinity_annotations(
    ingress: str, annotations: Mapping[str, str] | None, *, canary: bool = False
) -> tuple[AffinitySettings, list[Problem]]:
    """Standalone form of `parse_affinity`: (settings, problems) of one Ingress ("ns/name")."""
    problems: list[Problem] = []
    return parse_affinity(Annotations(ingress, annotations, problems), canary=canary), problems


# ---------------------------------------------------------------------- per decision


def backend_tag(ref: BackendRef) -> str:
    """8 hex chars naming a backend (its Service port, subset and cluster)."""
    return hashlib.blake2b(str(ref).encode(), digest_size=4).hexdigest()


def bind_affinity(affinity: SessionAffinity | None, backend: BackendRef,
                  path: str | None = None) -> SessionAffinity | None:
    """The affinity of one RouteDecision: tagged with its backend, the cookie Path defaulting
    to the rule's path (`path`; ingress-nginx uses the matched location's path)."""
    if affinity is None:
        return None
    return replace(affinity, backend_tag=backend_tag(backend),
                   path=affinity.path or path or "/")


def canary_affinity(main: SessionAffinity | None, canary: AffinitySettings,
                    canary_backend: BackendRef, path: str | None = None) -> SessionAffinity | None:
    """The canary decision's affinity, as ingress-nginx's mergeAlternativeBackend: `sticky`
    copies the main line's settings (the canary is sticky too, same cookie); `legacy` keeps
    the canary Ingress's own (usually none: the canary ignores affinity)."""
    own = main if canary.canary_behavior == "sticky" else canary.affinity
    return bind_affinity(own, canary_backend, path)


def affinity_side(headers: Mapping[str, str], main: SessionAffinity | None,
                  canary: SessionAffinity | None) -> bool | None:
    """The affinity steps of ingress-nginx's route_to_alternative_balancer, run before the
    canary rules: False -> main line (the cookie was issued by it), True -> canary (issued
    by it), None -> decide by the canary rules (header, query, cookie, weight)."""
    sides = [(aff, side) for aff, side in ((main, False), (canary, True)) if aff is not None]
    return sticky_side(headers, sides)


def sticky_side(headers: Mapping[str, str],
                sides: Sequence[tuple[SessionAffinity, T]]) -> T | None:
    """The side (main line, canary, weighted destination) whose affinity issued the
    request's sticky cookie: the first whose cookie carries its backend tag; None: none
    did, balance as usual. `Route._choose` runs this before the canary rules."""
    header = headers.get("cookie")
    if not header:
        return None
    for aff, side in sides:
        tag = aff.backend_tag
        if not tag:
            continue
        value = read_sticky_cookie(header, aff.cookie)
        if value is not None and value.endswith(tag) and value[-9:-8] == "-":
            return side
    return None


_REGEX_CHARS = frozenset(".*+?()[]{}|^$\\")


def regex_cookie_path(affinity: SessionAffinity | None, rule_path: str) -> SessionAffinity | None:
    """The affinity of a rule whose path became a regex (use-regex, rewrite-target): a
    cookie Path defaulted to that regex would never match a request (ingress-nginx then
    asks for session-cookie-path), so it becomes the longest whole-segment literal prefix."""
    if affinity is None or affinity.path != rule_path:
        return affinity
    cut = next((i for i, ch in enumerate(rule_path) if ch in _REGEX_CHARS), None)
    if cut is None:
        return affinity
    literal = rule_path[:cut]
    path = literal if literal.endswith("/") else literal[:literal.rfind("/") + 1]
    return replace(affinity, path=path.rstrip("/") or "/")


# ---------------------------------------------------------------------- cookie value


@dataclass(frozen=True, slots=True)
class StickyValue:
    key: str  # endpoint_key()
    pos: int | None = None  # balanced mode: ring position (32 bits)
    tag: str = ""  # backend_tag()

    def encode(self) -> str:
        text = self.key if self.pos is None else f"{self.key}.{self.pos:08x}"
        return f"{text}-{self.tag}" if self.tag else text


_VALUE = re.compile(r"^([0-9a-f]{16})(?:\.([0-9a-f]{8}))?(?:-([0-9a-f]{8}))?$")


def decode_sticky(text: str) -> StickyValue | None:
    """The parts of a sticky cookie value; None when it is not one of ours (ignored)."""
    m = _VALUE.match(text)
    if m is None:
        return None
    pos = m.group(2)
    return StickyValue(m.group(1), int(pos, 16) if pos is not None else None, m.group(3) or "")


@lru_cache(maxsize=65536)
def _key(cluster: str, ip: str, port: int) -> str:
    return hashlib.blake2b(f"{cluster}/{ip}:{port}".encode(), digest_size=8).hexdigest()


def endpoint_key(ep: Endpoint) -> str:
    """16 hex chars naming an endpoint, the same in every gateway process (not its IP)."""
    return _key(ep.cluster, ep.ip, ep.port)


def read_sticky_cookie(header: str, name: str) -> str | None:
    """The first cookie `name` (case-sensitive, RFC 6265) in a Cookie header whose value is a
    sticky value. Browsers send the cookie with the longest Path first; repeated Cookie
    headers arrive joined with ", "."""
    if name not in header:
        return None
    for part in header.replace(",", ";").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.rstrip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if _VALUE.match(value):
                return value
    return None
