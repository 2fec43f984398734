"""ingress-nginx `allowlist-source-range` (and its older name, `whitelist-source-range`) and
`denylist-source-range`.

Each value is a comma-separated list of CIDRs or addresses (IPv4 or IPv6). A request of the
Ingress's rules from an address in the deny list, or, when there is an allow list, from an
address outside it, gets `403 Forbidden`: nginx's `deny <denylist>; allow <allowlist>;
deny all;`, first match wins. As in ingress-nginx:

* `allowlist-source-range` wins when both of its names are set;
* the check comes after the redirects (`app-root`, `permanent-/temporal-redirect`,
  `ssl-redirect` answer in nginx's rewrite phase, before its access phase);
* the client address is the request's (`RequestView.client_ip`: the peer, its PROXY
  protocol header's address, or behind a `--trusted-proxy` the last `X-Forwarded-For`
  address that is not itself trusted, nginx's `real_ip` with `real_ip_recursive on`);
* a value with an entry that is not a CIDR fails closed: every request of the Ingress's
  rules is denied (ingress-nginx's `LocationDenied`), and the problem is reported.

A canary Ingress cannot set it (reported); canary traffic follows the main Ingress's list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from gateway.types import RequestView, RouteDecision

from .rewrite import derive
from .values import Annotations, split_list

ALLOW_KEYS = ("allowlist-source-range", "whitelist-source-range")
DENY_KEY = "denylist-source-range"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class SourceRange:
    """One Ingress's parsed lists. `networks` None: no allow list; empty: deny everything
    (a bad value fails closed)."""

    networks: tuple[Network, ...] | None
    key: str  # the annotation the allow list came from (for /routes)
    denied: tuple[Network, ...] = ()


def parse_source_range(ann: Annotations) -> SourceRange | None:
    allow: tuple[Network, ...] | None = None  # None: no allow list
    key = ""
    for name in ALLOW_KEYS:
        found = ann.string(name)
        if found is None:
            continue
        key = found[0]
        networks = _networks(ann, found[0], found[1])
        allow = () if networks is None else networks  # a bad entry: deny everything
        if networks == ():
            ann.problem(key, "empty list: every request of this Ingress is denied (403)")
        break
    denied: tuple[Network, ...] = ()
    found = ann.string(DENY_KEY)
    if found is not None:
        networks = _networks(ann, found[0], found[1])
        if networks is None:
            allow, key = (), found[0]  # a bad entry: deny everything
        else:
            denied = networks
    if allow is None and not denied:
        return None
    return SourceRange(allow, key, denied)


def _networks(ann: Annotations, full: str, text: str) -> tuple[Network, ...] | None:
    """The list, or None (reported) when an entry is not a CIDR: the caller fails closed."""
    networks = parse_networks(text)
    if isinstance(networks, str):
        ann.problem(full, f"{networks!r} is not a CIDR or address: every request of this "
                    "Ingress is denied (403) until it is fixed, as ingress-nginx denies "
                    "the location")
        return None
    return networks


def parse_networks(text: str) -> tuple[Network, ...] | str:
    """A comma-separated list of CIDRs or addresses; the first bad entry instead."""
    networks: list[Network] = []
    for item in split_list(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            return item
    return tuple(networks)


def in_networks(ip: str, networks: tuple[Network, ...]) -> bool:
    """`ip` (IPv4-mapped IPv6 counts as IPv4) is in one of `networks`; never for a non-address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


class AddressVerdicts:
    """A bounded memo of address -> verdict: clients repeat, and parsing an address and
    walking the networks per request would not be cheap."""

    __slots__ = ("decide", "_seen")

    SIZE = 4096

    def __init__(self, decide: Callable[[str], bool]) -> None:
        self.decide = decide
        self._seen: dict[str, bool] = {}

    def __call__(self, ip: str) -> bool:
        hit = self._seen.get(ip)
        if hit is None:
            hit = self.decide(ip)
            if len(self._seen) >= self.SIZE:
                self._seen.clear()
            self._seen[ip] = hit
        return hit


class AllowCheck:
    """A route's source check: `denied(request)` is the 403 decision, or None to go on."""

    __slots__ = ("source", "decision", "_allowed")

    def __init__(self, source: SourceRange, base: RouteDecision) -> None:
        self.source = source
        self.decision = derive(base, deny=403, mirrors=(), redirect=None)
        self._allowed = AddressVerdicts(self._allows)

    def denied(self, request: RequestView) -> RouteDecision | None:
        return None if self._allowed(request.client_ip) else self.decision

    def _allows(self, ip: str) -> bool:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return False
        source = self.source
        if in_networks(ip, source.denied):  # nginx: the deny lines come first
            return False
        return source.networks is None or in_networks(ip, source.networks)

    def describe(self) -> dict:
        allow = self.source.networks
        return {"annotation": self.source.key or None,
                "allow": None if allow is None else [str(n) for n in allow],
                "deny": [str(n) for n in self.source.denied]}
