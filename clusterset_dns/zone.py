"""The clusterset.local zone: (qname, qtype) + catalog -> rcode and record sections.

Pure and table-driven (digest section 3, rules D1-D32 and G1-G11): no I/O, no clock
(the SOA serial comes from the catalog). Names are tuples of lower-case labels without
the root; the wire layer restores the query's spelling (0x20) when it renders them.

Every name is a *node* with RRsets; an absent node is NXDOMAIN, a node without the asked
type is NODATA. Both negative forms carry the zone's SOA in the authority section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from clusterset_dns.catalog import Endpoint, Port, ServiceRecords

# Record types and classes we handle by name.
A, NS, SOA, TXT, AAAA, SRV, OPT, IXFR, AXFR, ANY = 1, 2, 6, 16, 28, 33, 41, 251, 252, 255
IN = 1
# Response codes.
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

#: The DNS-based multicluster service discovery schema version (DNSSPEC 2.2), and its TTL.
SCHEMA_VERSION = "1.0.0"
VERSION_TTL = 28800
#: SOA timers (CoreDNS's, digest G4).
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400

Name = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Soa:
    mname: Name
    rname: Name
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: Name


@dataclass(frozen=True, slots=True)
class RR:
    name: Name
    rtype: int
    ttl: int
    rdata: str | Name | Soa | Srv  # A/AAAA/TXT: text; NS: a name


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int
    aa: bool = True
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()

    @property
    def has_soa(self) -> bool:
        """Carries the SOA (whose serial moves with every catalog change)."""
        return any(rr.rtype == SOA for rr in self.answer + self.authority)


class CatalogView(Protocol):
    """What the zone reads from the catalog."""

    serial: int

    def service(self, namespace: str, name: str) -> ServiceRecords | None: ...

    def has_namespace(self, namespace: str) -> bool: ...


@dataclass
class _Node:
    """An existing name: its RRsets by type, and the additional records that go with each."""

    rrsets: dict[int, tuple[RR, ...]] = field(default_factory=dict)
    extra: dict[int, tuple[RR, ...]] = field(default_factory=dict)


_ANY_ORDER = (SOA, NS, A, AAAA, SRV, TXT)


def parse_name(text: str) -> Name:
    """`Svc.NS.svc.clusterset.local.` -> ('svc', 'ns', 'svc', 'clusterset', 'local')."""
    return tuple(label.lower() for label in text.strip().rstrip(".").split(".") if label)


def _uniq(rrs: list[RR]) -> tuple[RR, ...]:
    return tuple(dict.fromkeys(rrs))


class Zone:
    """Resolution rules for one zone (default clusterset.local)."""

    def __init__(
        self,
        origin: str = "clusterset.local",
        ttl: int = 5,
        *,
        ack_names: bool = True,
        ns_addresses: tuple[str, ...] = (),
    ) -> None:
        self.origin: Name = parse_name(origin)
        if not self.origin:
            raise ValueError("the zone must not be the root")
        if not 0 <= ttl <= 2**31 - 1:
            raise ValueError(f"ttl {ttl} out of range")
        self.ttl = ttl
        self.ack_names = ack_names
        self.ns_name: Name = ("ns", "dns", *self.origin)
        self.ns_addresses = ns_addresses

    def relative(self, qname: Name) -> Name | None:
        """The labels left of the zone, or None when qname is outside it."""
        n = len(self.origin)
        if len(qname) < n or qname[len(qname) - n:] != self.origin:
            return None
        return qname[: len(qname) - n]

    def soa(self, serial: int) -> RR:
        """G4: owner = zone, TTL = min(ttl, 300), MINIMUM = the record TTL."""
        data = Soa(self.ns_name, ("hostmaster", *self.origin), serial & 0xFFFFFFFF,
                   SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl)
        return RR(self.origin, SOA, min(self.ttl, 300), data)

    # ------------------------------------------------------------------ resolution

    def resolve(
        self, view: CatalogView, qname: Name, qtype: int, qclass: int = IN, *, synced: bool = True
    ) -> Answer:
        rel = self.relative(qname)
        if rel is None or qclass != IN or qtype in (AXFR, IXFR):
            return Answer(REFUSED, aa=False)  # not ours (or a transfer): never recursive
        soa = self.soa(view.serial)
        if not synced:
            return Answer(SERVFAIL, authority=(soa,))  # D31: no negative caching at start
        node = self._node(view, rel, qname, soa)
        if node is None:
            return Answer(NXDOMAIN, authority=(soa,))
        if qtype == ANY:
            found = [t for t in _ANY_ORDER if t in node.rrsets]
            if found:
                return Answer(
                    NOERROR,
                    answer=tuple(rr for t in found for rr in node.rrsets[t]),
                    additional=_uniq([rr for t in found for rr in node.extra.get(t, ())]),
                )
        elif qtype in node.rrsets:
            return Answer(NOERROR, answer=node.rrsets[qtype], additional=node.extra.get(qtype, ()))
        return Answer(NOERROR, authority=(soa,))  # NODATA

    def _node(self, view: CatalogView, rel: Name, qname: Name, soa: RR) -> _Node | None:
        n = len(rel)
        if n == 0:
            return self._apex(soa)
        if rel[-1] == "svc":
            if n == 1:
                return _Node()
            if n == 2:
                return _Node() if view.has_namespace(rel[0]) else None
            svc = view.service(rel[-2], rel[-3])
            if svc is None or not svc.exists:
                return None
            return self._service_node(svc, rel[:-3], qname[n - 3:])
        if n == 1:
            if rel[0] == "dns-version":
                return _Node({TXT: (RR(qname, TXT, VERSION_TTL, SCHEMA_VERSION),)})
            if rel[0] in ("pod", "dns"):
                return _Node()  # empty non-terminals (D21); nothing exists below pod (D22)
            return None
        if rel == ("ns", "dns"):
            return _Node(self._addresses(self.ns_name, self.ns_addresses))
        return None

    def _apex(self, soa: RR) -> _Node:
        ns = RR(self.origin, NS, self.ttl, self.ns_name)
        glue = self._addresses(self.ns_name, self.ns_addresses)
        return _Node({SOA: (soa,), NS: (ns,)}, {NS: glue.get(A, ()) + glue.get(AAAA, ())})

    def _addresses(self, owner: Name, addresses: tuple[str, ...] | list[str]) -> dict[int, tuple[RR, ...]]:
        out: dict[int, tuple[RR, ...]] = {}
        v4 = tuple(RR(owner, A, self.ttl, ip) for ip in addresses if ":" not in ip)
        v6 = tuple(RR(owner, AAAA, self.ttl, ip) for ip in addresses if ":" in ip)
        if v4:
            out[A] = v4
        if v6:
            out[AAAA] = v6
        return out

    def _service_node(self, svc: ServiceRecords, prefix: Name, base: Name) -> _Node | None:
        """`base` is `<svc>.<ns>.svc.<zone>`; prefix the labels left of it."""
        if not prefix:
            node = _Node(self._addresses(base, svc.ips4 + svc.ips6))
            self._srv(node, svc, base, base, None)
            return node
        if prefix[0].startswith("_"):
            return self._srv_node(svc, prefix, base)
        if not svc.headless:
            return None  # pod names exist only for Headless imports
        matched = [e for e in svc.endpoints if e.cluster and (e.hostname, *e.cluster) == prefix]
        if len(prefix) == 1 and self.ack_names:
            # ACK One form <hostname>.<svc>.<ns>: the shape the spec reserves for
            # <clusterid>.<svc>.<ns>, so it exists only as a ready endpoint's hostname.
            matched += [e for e in svc.endpoints if e.hostname == prefix[0]]
        if not matched:
            return None
        return _Node(self._addresses(prefix + base, _dedup_addresses(matched)))

    def _srv_node(self, svc: ServiceRecords, prefix: Name, base: Name) -> _Node | None:
        """`_<port>._<proto>.<svc>...` SRV; `_<proto>.<svc>...` is its empty non-terminal."""
        if len(prefix) == 1:
            proto = prefix[0][1:]
            ports = (p for e in svc.endpoints for p in e.ports) if svc.headless else svc.ports
            return _Node() if any(p.name and p.protocol == proto for p in ports) else None
        if len(prefix) != 2 or not prefix[1].startswith("_"):
            return None
        node = _Node()
        self._srv(node, svc, prefix + base, base, (prefix[0][1:], prefix[1][1:]))
        return node if node.rrsets else None

    def _srv(
        self, node: _Node, svc: ServiceRecords, owner: Name, base: Name, want: tuple[str, str] | None
    ) -> None:
        """SRV RRset (+ additional addresses) for the bare form (want None) or one named port.

        G6: priority 0, weight 100 // candidates (before dedup, at least 1); G7: dedup by
        (target, port) and one address record per (target, address).
        """
        cands: list[tuple[Name, int, tuple[str, ...]]] = []  # (target, port, addresses)

        def matches(p: Port) -> bool:
            return want is None or (bool(p.name) and (p.name, p.protocol) == want)

        if svc.headless:
            for e in svc.endpoints:
                if not e.cluster:
                    continue  # no cluster id: no per-endpoint name to point at
                target = (e.hostname, *e.cluster, *base)
                cands += [(target, p.port, (e.address,)) for p in e.ports if matches(p)]
        else:
            cands += [(base, p.port, svc.ips4 + svc.ips6) for p in svc.ports if matches(p)]
        if not cands:
            return
        weight = max(1, 100 // len(cands))
        srvs: dict[tuple[Name, int], RR] = {}
        extra: dict[tuple[Name, str], RR] = {}
        for target, port, addresses in cands:
            srvs.setdefault((target, port), RR(owner, SRV, self.ttl, Srv(0, weight, port, target)))
            for ip in addresses:
                extra.setdefault((target, ip), RR(target, AAAA if ":" in ip else A, self.ttl, ip))
        node.rrsets[SRV] = tuple(srvs.values())
        node.extra[SRV] = tuple(extra.values())


def _dedup_addresses(endpoints: list[Endpoint]) -> list[str]:
    return list(dict.fromkeys(e.address for e in endpoints))
