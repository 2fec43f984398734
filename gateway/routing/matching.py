"""Host and path matching per the Ingress spec (digest section 3: H1-H5, P1-P10, D1-D2).

Everything is precomputed per host so `match()` is a few dict lookups: exact hosts in a
dict, one-label wildcards in a dict keyed by the suffix, then the host-less catch-all;
per host, Exact paths in a dict and Prefix paths in a dict keyed by the normalised prefix,
probed at each '/' boundary of the request path from the longest down (element-wise by
construction). Regexes only on hosts where some Ingress set `use-regex`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Generic, TypeVar

T = TypeVar("T")

EXACT = "Exact"
PREFIX = "Prefix"
IMPL = "ImplementationSpecific"
PATH_TYPES = (EXACT, PREFIX, IMPL)

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def host_error(host: str) -> str | None:
    """Why a rule host is invalid (the API server's rules), or None when it is fine."""
    if host == "*":
        return "host '*' is invalid: a wildcard must be the whole first label of a DNS name"
    if ":" in host:
        return "host must not contain a port"
    if host[-1:].isdigit():  # (an IPv4 address does; a failed parse costs an exception)
        try:
            ipaddress.ip_address(host)
            return "host must be a DNS name, not an IP address"
        except ValueError:
            pass
    labels = host.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            return "wildcard host needs a domain after '*.'"
    if len(host) > 253 or not all(len(lb) <= 63 and _LABEL.match(lb) for lb in labels):
        return "host is not a valid DNS name (a '*' is only allowed as the whole first label)"
    return None


def normalize_request_host(host: str) -> str:
    """Lower-case, strip the port and a trailing dot (Host is case-insensitive, DNS)."""
    if ":" in host:
        if host.startswith("["):
            end = host.find("]")
            host = host[: end + 1] if end > 0 else host
        else:
            host = host.rsplit(":", 1)[0]
    if host.endswith("."):
        host = host.rstrip(".")
    return host.lower()


def path_error(path: str, path_type: str) -> str | None:
    if path_type not in PATH_TYPES:
        return f"unknown pathType {path_type!r}"
    if not path.startswith("/"):
        return f"path {path!r} must start with '/'"
    return None


def prefix_key(path: str) -> str:
    """A Prefix path's lookup key: the trailing '/' is ignored (P4), '/' becomes ''."""
    return path.rstrip("/")


class PathTable(Generic[T]):
    """The paths of one host. Values are opaque (routes)."""

    def __init__(self) -> None:
        self.exact: dict[str, T] = {}
        self.prefix: dict[str, T] = {}
        #: Original path of each prefix entry (for '/foo' vs '/foo/' and for regex mode).
        self.prefix_paths: dict[str, str] = {}
        self.regex: list[tuple[re.Pattern[str], T]] | None = None

    def add_exact(self, path: str, value: T) -> T | None:
        """Add unless taken; returns the value already there (the older one wins)."""
        if path in self.exact:
            return self.exact[path]
        self.exact[path] = value
        return None

    def add_prefix(self, path: str, value: T) -> T | None:
        key = prefix_key(path)
        old = self.prefix.get(key)
        if old is not None:
            old_path = self.prefix_paths[key]
            if path == old_path:
                return old
            if len(path) < len(old_path):
                return None  # '/foo' after '/foo/': both match the same, the longer wins (P4)
        self.prefix[key], self.prefix_paths[key] = value, path
        return None

    def enable_regex(self) -> list[str]:
        """ingress-nginx `use-regex`: every non-Exact path of the host becomes a
        case-insensitive regex anchored at the start, tried longest path first (ties:
        reverse lexicographic, as ingress-nginx sorts locations). Returns bad patterns."""
        entries = sorted(((p, v) for k, v in self.prefix.items()
                          for p in [self.prefix_paths[k]]),
                         key=lambda pv: pv[0], reverse=True)
        entries.sort(key=lambda pv: len(pv[0]), reverse=True)
        compiled: list[tuple[re.Pattern[str], T]] = []
        bad: list[str] = []
        for path, value in entries:
            try:
                compiled.append((re.compile("^" + path, re.IGNORECASE), value))
            except re.error:
                bad.append(path)
        self.regex = compiled
        return bad

    def match(self, path: str) -> T | None:
        """Exact first (wins ties, P6/P7), then the longest element-wise Prefix (P3/P10)."""
        value = self.exact.get(path)
        if value is not None:
            return value
        if self.regex is not None:
            for pattern, value in self.regex:
                if pattern.match(path):
                    return value
            return None
        prefix = self.prefix
        if not prefix:
            return None
        probe = path
        while True:
            value = prefix.get(probe)
            if value is not None:
                return value
            cut = probe.rfind("/")
            if cut < 0:
                return None
            probe = probe[:cut]

    def values(self) -> list[T]:
        return list(self.exact.values()) + list(self.prefix.values())


class VirtualHost(Generic[T]):
    """One host of the table: its paths and the default for unmatched paths."""

    def __init__(self, name: str) -> None:
        self.name = name  # "foo.com", "*.foo.com", or "" for the host-less catch-all
        self.paths: PathTable[T] = PathTable()
        self.default: T | None = None
        self.default_owner: str | None = None


class HostTable(Generic[T]):
    """Host selection (H1-H5): exact host, else one-label wildcard, else the catch-all.

    Like nginx server selection and Envoy virtual hosts, the host is chosen first; a host
    whose paths do not match returns its own default (or 404), never another host's rule.
    """

    def __init__(self) -> None:
        self.exact: dict[str, VirtualHost[T]] = {}
        self.wildcard: dict[str, VirtualHost[T]] = {}  # "foo.com" for "*.foo.com"
        self.catch_all: VirtualHost[T] | None = None
        #: server-alias names -> the host entry they share (gateway/routing/aliases.py).
        self.aliases: dict[str, VirtualHost[T]] = {}

    def get_or_create(self, host: str) -> VirtualHost[T]:
        if not host:
            if self.catch_all is None:
                self.catch_all = VirtualHost("")
            return self.catch_all
        if host.startswith("*."):
            return self.wildcard.setdefault(host[2:], VirtualHost(host))
        return self.exact.setdefault(host, VirtualHost(host))

    def find(self, host: str) -> VirtualHost[T] | None:
        """The host entry a request with this (normalised) Host belongs to."""
        if host in self.exact:
            return self.exact[host]
        alias = self.aliases.get(host)
        if alias is not None:
            return alias
        dot = host.find(".")
        if dot > 0:
            vhost = self.wildcard.get(host[dot + 1:])
            if vhost is not None:
                return vhost
        return self.catch_all

    def hosts(self) -> list[VirtualHost[T]]:
        out = list(self.exact.values()) + list(self.wildcard.values())
        return out + ([self.catch_all] if self.catch_all is not None else [])
