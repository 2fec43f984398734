"""ingress-nginx rate limits: `limit-rps`, `limit-rpm`, `limit-burst-multiplier`,
`limit-connections`, and `limit-allowlist` (older name `limit-whitelist`); and the values of
`limit-rate` / `limit-rate-after`.

Per client address and per Ingress, as ingress-nginx's `limit_req`/`limit_conn` zones are:

* `limit-rps` / `limit-rpm`: nginx `limit_req ... nodelay`. Each client has an excess that
  drains at the rate and grows by one per admitted request; a request that would take it
  over the burst (rate x `limit-burst-multiplier`, default 5) is refused, and a refused request
  costs nothing. A new client starts empty, so burst + 1 requests pass at once. With both set,
  a request must pass both, and is charged to both only when it does.
* `limit-connections`: nginx `limit_conn`: requests of one client in progress on the
  Ingress's rules at once (counted from routing to the end of the response). As in nginx,
  the rates are checked first: a request refused here has been charged to them.
* `limit-allowlist`: CIDRs or addresses exempt from all of them.
* Refused requests get 503 (ingress-nginx's `limit-req-status-code` / `limit-conn-status-code`
  defaults; `--limit-req-status-code` / `--limit-conn-status-code`).
* The client address is the one `allowlist-source-range` uses (`RequestView.client_ip`).
* The check comes after the redirects and before `allowlist-source-range` (nginx's
  preaccess phase runs before its access phase).
* Counters live in zones named after the Ingress (namespace, name, uid) and survive route
  table rebuilds (nginx keeps a zone's shared memory across reloads); a zone holds at most
  `MAX_CLIENTS` clients, the least recently added going first when it is full.

`limit-rate` / `limit-rate-after` (response bandwidth, in whole kilobytes as ingress-nginx
writes them) are parsed here too; the data path applies them (gateway/proxy/throttle.py).

Bad values are reported and that annotation ignored; a bad allowlist entry leaves the limits
on for everyone. A canary Ingress cannot set them (canary traffic follows the main Ingress).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.types import RequestView

from .allow import AddressVerdicts, Network, in_networks, parse_networks
from .values import Annotations

LIMIT_KEYS: Final = ("limit-rps", "limit-rpm", "limit-burst-multiplier", "limit-connections",
                     "limit-allowlist", "limit-whitelist", "limit-rate", "limit-rate-after")
DEFAULT_BURST_MULTIPLIER: Final = 5
MAX_CLIENTS: Final = 65536  # per zone (nginx's 5 MB zone holds some 40-80 thousand)


@dataclass(frozen=True)
class RateLimitSettings:
    rps: int = 0
    rpm: int = 0
    connections: int = 0
    burst_multiplier: int = DEFAULT_BURST_MULTIPLIER
    exempt: tuple[Network, ...] = ()


def parse_send_rate(ann: Annotations) -> tuple[int, int]:
    """`limit-rate` and `limit-rate-after` in bytes: ingress-nginx takes whole kilobytes
    (`limit_rate <n>k`, `limit_rate_after <n>k`); 0 or unset: no limit. `limit-rate-after`
    alone does nothing, as in nginx."""
    rate = ann.integer("limit-rate", low=0) or 0
    after = ann.integer("limit-rate-after", low=0) or 0
    return rate * 1024, after * 1024 if rate else 0


def parse_rate_limit(ann: Annotations) -> RateLimitSettings | None:
    rps = ann.integer("limit-rps", low=0) or 0
    rpm = ann.integer("limit-rpm", low=0) or 0
    conn = ann.integer("limit-connections", low=0) or 0
    multiplier = ann.integer("limit-burst-multiplier", low=1)
    exempt: tuple[Network, ...] = ()
    for name in ("limit-allowlist", "limit-whitelist"):  # the newer name wins
        found = ann.string(name)
        if found is not None:
            networks = parse_networks(found[1])
            if isinstance(networks, str):
                ann.problem(found[0], f"{networks!r} is not a CIDR or address: the list is "
                            "ignored and the limits apply to every client")
            else:
                exempt = networks
            break
    if not (rps or rpm or conn):
        return None
    return RateLimitSettings(rps, rpm, conn, multiplier or DEFAULT_BURST_MULTIPLIER, exempt)


class Bucket:
    """One `limit_req` zone: per client, the excess (in requests) and when it was last charged."""

    __slots__ = ("rate", "burst", "clients")

    def __init__(self, rate: float, burst: float, clients: dict[str, list[float]]) -> None:
        self.rate = rate  # requests per second
        self.burst = burst
        self.clients = clients

    def excess(self, key: str, now: float) -> float:
        """The client's excess if this request were admitted (-1: a new client)."""
        entry = self.clients.get(key)
        if entry is None:
            return -1.0
        excess = entry[0] - self.rate * (now - entry[1]) + 1.0
        return excess if excess > 0.0 else 0.0  # (nginx: unused credit carries up to one)

    def charge(self, key: str, excess: float, now: float) -> None:
        clients = self.clients
        if excess < 0.0:
            if len(clients) >= MAX_CLIENTS:
                self._make_room(now)
            clients[key] = [0.0, now]
        else:
            entry = clients[key]
            entry[0], entry[1] = excess, now

    def _make_room(self, now: float) -> None:
        """Drop clients whose excess has drained; if none has, the oldest quarter."""
        clients = self.clients
        drained = [k for k, (excess, at) in clients.items() if excess <= self.rate * (now - at)]
        for k in drained or list(clients)[: MAX_CLIENTS // 4]:
            del clients[k]


class RateLimit:
    """One Ingress's limits, shared by all of its rules (and by both listeners)."""

    __slots__ = ("settings", "buckets", "active", "req_status", "conn_status", "_exempt")

    def __init__(self, settings: RateLimitSettings, zone: Zone, req_status: int,
                 conn_status: int) -> None:
        self.settings = settings
        m = settings.burst_multiplier
        self.buckets: list[Bucket] = []
        if settings.rps:
            self.buckets.append(Bucket(float(settings.rps), float(settings.rps * m), zone.rps))
        if settings.rpm:
            self.buckets.append(Bucket(settings.rpm / 60.0, float(settings.rpm * m), zone.rpm))
        self.active = zone.active  # client -> requests in progress (limit-connections)
        self.req_status = req_status
        self.conn_status = conn_status
        exempt = settings.exempt
        self._exempt = AddressVerdicts(lambda ip: in_networks(ip, exempt))

    def admit(self, request: RequestView, now: float) -> tuple[int, str]:
        """(0, key) to go on, where a non-empty key must be `release`d at the request's end,
        or (status, "") to refuse the request."""
        key = request.client_ip
        if self.settings.exempt and self._exempt(key):
            return 0, ""
        buckets = self.buckets  # nginx runs limit_req before limit_conn
        if buckets:
            excess = [b.excess(key, now) for b in buckets]
            for b, e in zip(buckets, excess, strict=True):
                if e > b.burst:
                    return self.req_status, ""
            for b, e in zip(buckets, excess, strict=True):
                b.charge(key, e, now)
        limit = self.settings.connections
        if not limit:
            return 0, ""
        if self.active.get(key, 0) >= limit:
            return self.conn_status, ""
        self.active[key] = self.active.get(key, 0) + 1
        return 0, key

    def release(self, key: str) -> None:
        left = self.active.get(key, 0) - 1
        if left > 0:
            self.active[key] = left
        else:
            self.active.pop(key, None)

    def describe(self) -> dict:
        s = self.settings
        return {"rps": s.rps or None, "rpm": s.rpm or None, "burstMultiplier": s.burst_multiplier,
                "connections": s.connections or None, "exempt": [str(n) for n in s.exempt],
                "clients": max((len(b.clients) for b in self.buckets), default=len(self.active))}


class Zone:
    """The counters of one Ingress's limits."""

    __slots__ = ("rps", "rpm", "active")

    def __init__(self) -> None:
        self.rps: dict[str, list[float]] = {}
        self.rpm: dict[str, list[float]] = {}
        self.active: dict[str, int] = {}


class RateZones:
    """Zones by name, kept across route-table rebuilds; `prune` drops those the latest
    build(s) did not use (deleted Ingresses)."""

    def __init__(self, req_status: int = 503, conn_status: int = 503) -> None:
        self.req_status = req_status
        self.conn_status = conn_status
        self.zones: dict[str, Zone] = {}
        self._used: set[str] = set()

    def limit(self, name: str, settings: RateLimitSettings) -> RateLimit:
        zone = self.zones.get(name)
        if zone is None:
            zone = self.zones[name] = Zone()
        self._used.add(name)
        return RateLimit(settings, zone, self.req_status, self.conn_status)

    def prune(self) -> None:
        for name in [n for n in self.zones if n not in self._used]:
            del self.zones[name]
        self._used = set()
