"""ingress-nginx `allowlist-source-range` (and its older name, `whitelist-source-range`).

The value is a comma-separated list of CIDRs or addresses (IPv4 or IPv6). A request of the
Ingress's rules whose client address is not in the list gets `403 Forbidden`, as nginx's
`allow ...; deny all;` gives. As in ingress-nginx:

* `allowlist-source-range` wins when both names are set;
* the check comes after the redirects (`app-root`, `permanent-/temporal-redirect`,
  `ssl-redirect` answer in nginx's rewrite phase, before its access phase);
* the client address is the connection's peer; behind a trusted proxy (`--trusted-proxy`),
  the last address of `X-Forwarded-For` that is not itself trusted (nginx `real_ip` with
  `real_ip_recursive on`);
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

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class SourceRange:
    """One Ingress's parsed list; `networks` empty means deny everything (a bad value)."""

    networks: tuple[Network, ...]
    key: str  # the annotation it came from (for /routes)


def parse_source_range(ann: Annotations) -> SourceRange | None:
    for name in ALLOW_KEYS:
        found = ann.string(name)
        if found is None:
            continue
        full, text = found
        networks: list[Network] = []
        for item in split_list(text):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                ann.problem(full, f"{item!r} is not a CIDR or address: every request of this "
                            "Ingress is denied (403) until it is fixed, as ingress-nginx denies "
                            "the location")
                return SourceRange((), full)
        if not networks:
            ann.problem(full, "empty list: every request of this Ingress is denied (403)")
        return SourceRange(tuple(networks), full)
    return None


class AllowCheck:
    """A route's source check: `denied(request)` is the 403 decision, or None to go on."""

    __slots__ = ("source", "trusted", "decision", "_seen")

    def __init__(self, source: SourceRange, trusted: Callable[[str], bool] | None,
                 base: RouteDecision) -> None:
        self.source = source
        self.trusted = trusted
        self.decision = derive(base, deny=403, mirrors=(), redirect=None)
        self._seen: dict[str, bool] = {}  # address -> allowed (addresses repeat)

    def denied(self, request: RequestView) -> RouteDecision | None:
        ip = client_address(request, self.trusted)
        ok = self._seen.get(ip)
        if ok is None:
            ok = self._allows(ip)
            if len(self._seen) >= 4096:
                self._seen.clear()
            self._seen[ip] = ok
        return None if ok else self.decision

    def _allows(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.source.networks)

    def describe(self) -> dict:
        return {"annotation": self.source.key,
                "allow": [str(n) for n in self.source.networks]}


def client_address(request: RequestView, trusted: Callable[[str], bool] | None) -> str:
    """The peer, or behind trusted proxies the last untrusted X-Forwarded-For address."""
    ip = request.client_ip
    if trusted is None or not trusted(ip):
        return ip
    forwarded = request.headers.get("x-forwarded-for")
    if not forwarded:
        return ip
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else ip
