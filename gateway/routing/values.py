"""Annotation access and value parsing: every bad value becomes a named `Problem`, never an error.

Issue item 6: a bad annotation must not take the gateway down. Each parser here returns
None (or a default) and records a Problem naming the Ingress and the annotation, so the
caller ignores just that annotation, as ingress-nginx and MSE do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NGINX = "nginx.ingress.kubernetes.io/"
MSE = "mse.ingress.kubernetes.io/"
OURS = "multicluster.amcs.dev/"

#: Understood under both nginx. and mse. (MSE accepts either prefix for these).
COMPATIBLE_KEYS = frozenset({
    "canary", "canary-by-header", "canary-by-header-value", "canary-by-header-pattern",
    "canary-by-cookie", "canary-weight", "canary-weight-total",
    "load-balance", "upstream-hash-by",
    "mirror-target", "mirror-host", "mirror-request-body",
    "proxy-next-upstream", "proxy-next-upstream-tries", "proxy-next-upstream-timeout",
    "proxy-connect-timeout", "proxy-send-timeout", "proxy-read-timeout",
    "upstream-vhost", "use-regex",
    "rewrite-target", "x-forwarded-prefix", "app-root",
    "permanent-redirect", "permanent-redirect-code", "temporal-redirect", "temporal-redirect-code",
    "ssl-redirect", "force-ssl-redirect", "preserve-trailing-slash",
    "from-to-www-redirect",  # www.FROM_TO_WWW_KEY
    "allowlist-source-range", "whitelist-source-range", "denylist-source-range",  # allow.py
    "proxy-body-size",
    "proxy-buffering", "proxy-request-buffering", "proxy-buffer-size",  # buffering.BUFFERING_KEYS
    "proxy-buffers-number", "proxy-max-temp-file-size", "client-body-buffer-size",
    "limit-rps", "limit-rpm", "limit-burst-multiplier", "limit-connections",  # ratelimit.LIMIT_KEYS
    "limit-allowlist", "limit-whitelist", "limit-rate", "limit-rate-after",
    "enable-cors", "cors-allow-origin", "cors-allow-methods", "cors-allow-headers",  # cors.CORS_KEYS
    "cors-expose-headers", "cors-allow-credentials", "cors-max-age",
    "auth-url", "auth-method", "auth-signin", "auth-signin-redirect-param",  # extauth.EXT_AUTH_KEYS
    "auth-response-headers", "auth-request-redirect", "auth-cache-key", "auth-cache-duration",
    "auth-always-set-cookie", "auth-proxy-set-headers", "enable-global-auth",
    "auth-type", "auth-secret", "auth-secret-type", "auth-realm",  # basicauth.BASIC_AUTH_KEYS
    "auth-tls-secret", "auth-tls-verify-client", "auth-tls-verify-depth",  # clientcert.CLIENT_CERT_KEYS
    "auth-tls-error-page", "auth-tls-pass-certificate-to-upstream", "auth-tls-match-cn",
    # cookie session affinity (affinity.AFFINITY_KEYS; listed here to keep imports acyclic)
    "affinity", "affinity-mode", "affinity-canary-behavior",
    "session-cookie-name", "session-cookie-path", "session-cookie-domain",
    "session-cookie-max-age", "session-cookie-expires", "session-cookie-samesite",
    "session-cookie-secure", "session-cookie-change-on-failure",
    "default-backend", "custom-http-errors",  # errors.ERROR_KEYS
    "ssl-passthrough",  # passthrough.KEY
    "backend-protocol", "server-alias", "enable-access-log",
    "proxy-redirect-from", "proxy-redirect-to", "proxy-cookie-domain",  # response_rewrite.REWRITE_KEYS
    "proxy-cookie-path",
    "proxy-ssl-secret", "proxy-ssl-verify", "proxy-ssl-verify-depth",  # proxyssl.PROXY_SSL_KEYS
    "proxy-ssl-name", "proxy-ssl-server-name", "proxy-ssl-ciphers", "proxy-ssl-protocols",
})
#: MSE-exclusive: only the mse. prefix (as MSE documents).
MSE_ONLY_KEYS = frozenset({
    "canary-by-query", "canary-by-query-value", "canary-by-query-pattern",
    "canary-by-cookie-value", "service-subset", "subset-labels", "destination",
    "mirror-target-service", "mirror-percentage", "timeout",
    "request-header-control-add", "request-header-control-update",
})
#: Our multi-cluster annotations (README.md documents each).
OUR_KEYS = frozenset({
    "cluster-weights", "cluster-priority", "priority-spillover", "overprovisioning-factor",
    "cluster-header", "cluster-header-match", "strict-cluster-routing", "target-cluster",
    "mirror-cluster", "mirror-cluster-percentage",
    "health-check-path", "health-check-interval", "health-check-timeout",
    "health-check-healthy-threshold", "health-check-unhealthy-threshold",
    "health-check-host", "health-check-statuses",
    "outlier-consecutive-5xx", "outlier-consecutive-gateway-failure",
    "outlier-base-ejection-time", "outlier-max-ejection-time",
    "outlier-max-ejection-percent", "outlier-interval", "outlier-always-eject-one-host",
    "panic-threshold",
    "retry-on-status", "retry-prefer-other-cluster",
})
#: Upstream annotations we deliberately do not implement (reported, so nobody is surprised).
UNSUPPORTED_KEYS = frozenset({
    "session-cookie-conditional-samesite-none", "session-cookie-partitioned",
    "session-cookie-hash", "configuration-snippet", "server-snippet", "auth-snippet",
})


@dataclass(frozen=True)
class Problem:
    """Why an Ingress, one of its rules, or one annotation was ignored (logged by the caller)."""

    ingress: str  # "ns/name"
    annotation: str | None
    message: str

    def __str__(self) -> str:
        where = f" annotation {self.annotation}" if self.annotation else ""
        return f"ingress {self.ingress}{where}: {self.message}"


class Annotations:
    """One Ingress's annotations with MSE's prefix rules; records Problems as it parses.

    nginx.ingress.kubernetes.io/ is read first, then mse.ingress.kubernetes.io/ (Higress
    reads nginx first too); MSE-only keys only under mse.; ours only under our prefix.
    """

    def __init__(self, ingress: str, raw: Mapping[str, str] | None, problems: list[Problem]):
        self.ingress = ingress
        self.raw = {str(k): ("" if v is None else str(v)) for k, v in (raw or {}).items()}
        self.problems = problems
        #: key -> (full key, value) of what `lookup` finds, worked out once: an Ingress is
        #: asked for some 140 keys, nearly all absent (a big fleet's rebuild reads thousands).
        self.found: dict[str, tuple[str, str]] = {}
        for full, value in self.raw.items():
            for prefix in (NGINX, MSE, OURS):
                if full.startswith(prefix):
                    key = full[len(prefix):]
                    if key in OUR_KEYS:
                        usable = prefix == OURS
                    elif key in MSE_ONLY_KEYS:
                        usable = prefix == MSE
                    else:
                        usable = prefix != OURS
                    if usable and not (prefix == MSE and key in self.found):  # nginx first
                        self.found[key] = (full, value)
                    break

    def lookup(self, key: str) -> tuple[str, str] | None:
        """(full key, value) of an upstream or our annotation, or None when absent: ours
        only under our prefix, MSE-only keys only under MSE's, the others under nginx's,
        else MSE's."""
        return self.found.get(key)

    def full_key(self, key: str) -> str | None:
        found = self.lookup(key)
        return found[0] if found is not None else None

    def has(self, key: str) -> bool:
        return self.lookup(key) is not None

    def orphans(self, keys: Iterable[str], needs: str) -> None:
        """Report each of `keys` that is set although `needs` (the annotation that turns
        them on) is not: they do nothing."""
        for key in keys:
            found = self.string(key)
            if found is not None:
                self.problem(found[0], f"needs {needs}; ignored")

    def problem(self, full_key: str | None, message: str) -> None:
        self.problems.append(Problem(self.ingress, full_key, message))

    def string(self, key: str) -> tuple[str, str] | None:
        """A non-empty, stripped string value; empty values are reported and ignored."""
        found = self.lookup(key)
        if found is None:
            return None
        full, value = found
        if not value.strip():
            self.problem(full, "empty value; ignored")
            return None
        return full, value.strip()

    def boolean(self, key: str) -> bool | None:
        found = self.string(key)
        if found is None:
            return None
        value = parse_go_bool(found[1])
        if value is None:
            self.problem(found[0], f"{found[1]!r} is not a boolean; ignored")
        return value

    def integer(self, key: str, *, low: int | None = None, high: int | None = None) -> int | None:
        found = self.string(key)
        if found is None:
            return None
        full, text = found
        try:
            value = int(text)
        except ValueError:
            self.problem(full, f"{text!r} is not an integer; ignored")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            self.problem(full, f"{value} is out of range [{low}, {high}]; ignored")
            return None
        return value

    def number(self, key: str, *, low: float, high: float | None = None) -> float | None:
        found = self.string(key)
        if found is None:
            return None
        full, text = found
        try:
            value = float(text)
        except ValueError:
            self.problem(full, f"{text!r} is not a number; ignored")
            return None
        if value != value or value < low or (high is not None and value > high):
            self.problem(full, f"{text} is out of range [{low}, {high}]; ignored")
            return None
        return value

    def seconds(self, key: str, *, allow_zero: bool = False) -> float | None:
        """A duration: unitless seconds (nginx/MSE style) or with an ms/s/m suffix."""
        found = self.string(key)
        if found is None:
            return None
        full, text = found
        value = parse_duration(text)
        if value is None or value < 0 or (value == 0 and not allow_zero):
            self.problem(full, f"{text!r} is not a valid duration (seconds, >0); ignored")
            return None
        return value

    def unknown_keys(self, canary: bool, allowed_on_canary: Iterable[str]) -> None:
        """Report annotations under our three prefixes that this gateway does not act on."""
        allowed = frozenset(allowed_on_canary)
        for full in sorted(self.raw):
            for prefix in (NGINX, MSE, OURS):
                if full.startswith(prefix):
                    key = full[len(prefix):]
                    self._check_key(full, prefix, key, canary, allowed)
                    break

    def _check_key(self, full: str, prefix: str, key: str, canary: bool,
                   allowed: frozenset[str]) -> None:
        known = (OUR_KEYS if prefix == OURS else
                 COMPATIBLE_KEYS | MSE_ONLY_KEYS if prefix == MSE else COMPATIBLE_KEYS)
        if key in known:
            if canary and key not in allowed:
                self.problem(full, "not applied on a canary Ingress (only canary, balancing "
                             "and backend-policy annotations are); ignored")
            return
        if prefix == NGINX and key in MSE_ONLY_KEYS:
            self.problem(full, f"MSE-only annotation: use {MSE}{key}; ignored")
        elif key in UNSUPPORTED_KEYS:
            self.problem(full, "not supported by this gateway; ignored")
        elif prefix == OURS:
            self.problem(full, "unknown annotation (typo?); ignored")
        else:
            self.problem(full, "not supported by this gateway; ignored")


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_bool(text: str) -> bool | None:
    """strconv.ParseBool, which ingress-nginx uses for boolean annotations."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    return None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_duration(text: str) -> float | None:
    match = _DURATION.match(text)
    if not match:
        return None
    value = float(match.group(1))
    unit = match.group(2) or "s"
    return value / 1000.0 if unit == "ms" else value * 60.0 if unit == "m" else value


def split_list(text: str, separators: str = ",\n") -> list[str]:
    """Split on any of `separators`, strip, drop empties."""
    items = [text]
    for sep in separators:
        items = [piece for item in items for piece in item.split(sep)]
    return [item.strip() for item in items if item.strip()]


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def object_ref(text: str, namespace: str) -> tuple[str, str] | None:
    """(namespace, name) of an object an annotation names as `name` (in `namespace`) or
    `namespace/name` (a Secret, a ConfigMap); None when a part is not an object name."""
    ns, _, name = text.rpartition("/")
    ref = (ns or namespace, name)
    return ref if _OBJECT_NAME.match(ref[0]) and _OBJECT_NAME.match(ref[1]) else None


def is_dns_label(text: str) -> bool:
    return len(text) <= 63 and bool(_DNS_LABEL.match(text))
