"""Query bytes -> reply bytes: the answer cache, its invalidation, and the slow path.

The fast path (`wire.fast_answer`) serves cache hits; everything else lands in
`Responder.slow`: a full hand parse of header + question (+ the OPT record), dnslib only
for unusual section layouts, resolution through the zone, rendering, and insertion into
the cache. Invalidation is per name: a service's change drops the cached answers for
every name under `<svc>.<ns>.svc.<zone>` and for `<ns>.svc.<zone>`; a change of the SOA
serial drops every cached answer that carries the SOA (negative answers, apex SOA).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import dnslib

from clusterset_dns.catalog import Catalog, ServiceKey
from clusterset_dns.wire import (
    CUTS,
    EDNS_PAYLOAD,
    FULL_LEN,
    HITS_TCP,
    HITS_UDP,
    PLAIN_LIMIT,
    PRE0,
    QTYPE,
    RCODE,
    TAIL,
    aliasable,
    assemble,
    badvers_reply,
    fast_answer,
    header_reply,
    render,
    variant,
)
from clusterset_dns.zone import FORMERR, NOTIMP, OPT, REFUSED, Name, Zone

QTYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
               33: "SRV", 64: "SVCB", 65: "HTTPS", 252: "AXFR", 255: "ANY"}
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED", 16: "BADVERS"}
#: Entry slots after wire's: the cache-index key the entry is filed under, and whether it
#: carries the SOA.
DEP, HAS_SOA = CUTS + 1, CUTS + 2

Dep = tuple[str, ...]
StatKey = tuple[str, str, str]  # (qtype, rcode, transport)


def qtype_name(qtype: int) -> str:
    return QTYPE_NAMES.get(qtype, "other")


def parse_question(data: bytes) -> tuple[int, Name] | None:
    """(end of the question section, lower-cased qname labels), or None when malformed."""
    n = len(data)
    pos = 12
    labels: list[str] = []
    while True:
        if pos >= n:
            return None
        length = data[pos]
        if length == 0:
            break
        if length > 63:
            return None  # a compression pointer (nothing to point at yet) or a reserved type
        end = pos + 1 + length
        if end > n:
            return None
        labels.append(data[pos + 1:end].lower().decode("latin-1"))
        pos = end
    pos += 1
    if pos - 12 > 255 or pos + 4 > n:
        return None
    return pos + 4, tuple(labels)


def parse_edns(data: bytes, qe: int) -> tuple[bool, int, int] | None:
    """After the question: (EDNS present, UDP payload size, EDNS version); None: FORMERR."""
    _, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    n = len(data)
    if an == ns == ar == 0:
        return (False, PLAIN_LIMIT, 0) if qe == n else None
    if an == ns == 0 and ar == 1 and data[qe:qe + 3] == b"\x00\x00\x29":
        if qe + 11 > n:
            return None
        size, ttl, rdlen = struct.unpack_from("!HIH", data, qe + 3)
        pos, end = qe + 11, qe + 11 + rdlen
        if end != n:
            return None
        while pos < end:  # options: code, length, data; they must tile the RDATA exactly
            if pos + 4 > end:
                return None
            pos += 4 + ((data[pos + 2] << 8) | data[pos + 3])
        if pos != end:
            return None
        return True, size, (ttl >> 16) & 0xFF
    # Anything else (TSIG, records in answer/authority, ...): let dnslib judge the packet.
    try:
        record = dnslib.DNSRecord.parse(data)
    except Exception:  # noqa: BLE001 - dnslib raises many types on garbage
        return None
    opts = [rr for rr in record.ar if rr.rtype == OPT]
    if len(opts) > 1 or any(str(o.rname) not in (".", "") for o in opts):
        return None
    if opts:
        return True, opts[0].rclass, (opts[0].ttl >> 16) & 0xFF
    return False, PLAIN_LIMIT, 0


class Responder:
    """Answers DNS messages for one zone from one catalog, through the answer cache."""

    def __init__(self, zone: Zone, catalog: Catalog, *, max_entries: int = 100_000) -> None:
        self.zone = zone
        self.catalog = catalog
        self.max_entries = max_entries
        #: False until the catalog's first full sync: in-zone queries get SERVFAIL.
        self.synced = False
        #: The answer cache, keyed by the lower-cased question bytes (qname + type + class).
        #: Lower-casing also folds type/class bytes 0x41-0x5A onto 0x61-0x7A: harmless, as the
        #: zone answers no type or class in either range (both get the same negative reply).
        self.plain: dict[bytes, list] = {}
        self.edns: dict[bytes, list] = {}
        #: UDP answers to EDNS queries keyed by question + OPT record (`wire.fast_answer`).
        self.alias: dict[bytes, list] = {}
        self._deps: dict[Dep, set[bytes]] = {}
        self._soa_keys: set[bytes] = set()
        self._soa_serial = catalog.serial
        # Statistics for metrics: answers of the slow path and hits of dropped entries.
        self.counts: dict[StatKey, int] = {}
        self.retired_hits = 0
        self.misses = 0
        self.invalidations = 0

    # ------------------------------------------------------------------ answering

    def answer(self, data: bytes, tcp: bool) -> bytes | None:
        """The reply to one message (None: send nothing)."""
        reply = fast_answer(self.plain, self.edns, self.alias, data, tcp)
        return reply if reply is not None else self.slow(data, tcp)

    def slow(self, data: bytes, tcp: bool) -> bytes | None:
        transport = "tcp" if tcp else "udp"
        if len(data) < 12 or data[2] & 0x80:
            return None  # no header to answer to, or a response (answering those loops)
        if data[2] & 0x78:
            return self._error(data, NOTIMP, transport)  # QUERY is the only opcode we serve
        if data[4:6] != b"\x00\x01":
            return self._error(data, FORMERR, transport)
        question = parse_question(data)
        if question is None:
            return self._error(data, FORMERR, transport)
        qe, qname = question
        qtype, qclass = struct.unpack_from("!HH", data, qe - 4)
        edns = parse_edns(data, qe)
        if edns is None:
            return self._error(data, FORMERR, transport, qtype)
        has_edns, size, version = edns
        if has_edns and version != 0:
            self._count((qtype_name(qtype), "BADVERS", transport))
            return badvers_reply(data, qe)
        if tcp:
            limit = None
        elif has_edns:
            limit = min(max(size, PLAIN_LIMIT), EDNS_PAYLOAD)
        else:
            limit = PLAIN_LIMIT
        key = data[12:qe].lower()
        table = self.edns if has_edns else self.plain
        entry = table.get(key)
        if entry is not None:  # an unusual packet shape, or a new OPT, with a cached answer
            entry[HITS_TCP if tcp else HITS_UDP] += 1
            if limit is not None and has_edns:
                self._alias(data, qe, entry, limit)
            return assemble(entry, data, qe, limit)
        self.misses += 1
        answer = self.zone.resolve(self.catalog, qname, qtype, qclass, synced=self.synced)
        entry = render(answer, qname, qe - 12, has_edns, qtype)
        entry[QTYPE] = qtype_name(qtype)
        entry[RCODE] = RCODE_NAMES.get(answer.rcode, str(answer.rcode))
        self._count((entry[QTYPE], entry[RCODE], transport))
        if self.synced and answer.rcode != REFUSED:
            # REFUSED (out of zone) is not kept: junk names must not crowd the zone's answers.
            self._put(table, key, entry, qname, answer.has_soa)
            if limit is not None and has_edns:
                self._alias(data, qe, entry, limit)
        return assemble(entry, data, qe, limit)

    def _alias(self, data: bytes, qe: int, entry: list, limit: int) -> None:
        """File `entry`'s UDP variant for this exact question + option-less OPT record.

        The key is lower-cased (0x20 spellings share it), which could fold payload-size
        bytes 0x41-0x5A onto 0x61-0x7A: alias only when every size that folds onto this
        key has the same UDP limit (`wire.aliasable`), so a hit never picks the wrong variant.
        """
        if len(data) - qe != 11 or data[-2:] != b"\x00\x00":
            return  # options (cookies ...): the question-keyed entry serves those
        if not aliasable(data[qe + 3], data[qe + 4]):
            return
        alias = list(entry)
        if entry[FULL_LEN] > limit:
            alias[PRE0:TAIL + 1] = variant(entry, limit)
        alias[HITS_UDP] = alias[HITS_TCP] = 0
        key = data[12:].lower()
        if self.entries >= self.max_entries:
            self.clear()
            return
        self.alias[key] = alias
        dep = alias[DEP]
        if dep is not None:
            self._deps.setdefault(dep, set()).add(key)
        if alias[HAS_SOA]:
            self._soa_keys.add(key)

    def _error(self, data: bytes, rcode: int, transport: str, qtype: int | None = None) -> bytes:
        self._count(("none" if qtype is None else qtype_name(qtype), RCODE_NAMES[rcode], transport))
        return header_reply(data, rcode)

    def _count(self, key: StatKey, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    # ------------------------------------------------------------------ the cache

    def _dep(self, qname: Name) -> Dep | None:
        """The index an answer is filed under: its service, or its namespace name."""
        rel = self.zone.relative(qname)
        if rel is None or not rel or rel[-1] != "svc":
            return None
        if len(rel) >= 3:
            return ("svc", rel[-2], rel[-3])
        if len(rel) == 2:
            return ("ns", rel[0])
        return None

    def _put(self, table: dict[bytes, list], key: bytes, entry: list, qname: Name, soa: bool) -> None:
        if self.entries >= self.max_entries:
            self.clear()  # crude but O(1) amortised; a flood of junk names only costs misses
        dep = self._dep(qname)
        entry += (dep, soa)
        table[key] = entry
        if dep is not None:
            self._deps.setdefault(dep, set()).add(key)
        if soa:
            self._soa_keys.add(key)

    def _drop(self, key: bytes) -> None:
        for table in (self.plain, self.edns, self.alias):
            entry = table.pop(key, None)
            if entry is None:
                continue
            self._retire(entry)
            keys = self._deps.get(entry[DEP]) if entry[DEP] is not None else None
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._deps[entry[DEP]]
        self._soa_keys.discard(key)

    def _retire(self, entry: list) -> None:
        """Fold a dropped entry's hit counters into the totals."""
        for slot, transport in ((HITS_UDP, "udp"), (HITS_TCP, "tcp")):
            if entry[slot]:
                self._count((entry[QTYPE], entry[RCODE], transport), entry[slot])
                self.retired_hits += entry[slot]

    def invalidate(self, services: Iterable[ServiceKey]) -> None:
        """Drop what a catalog change made stale; call right after changing the catalog."""
        for ns, name in services:
            for dep in (("svc", ns, name), ("ns", ns)):
                for key in list(self._deps.get(dep, ())):
                    self._drop(key)
                    self.invalidations += 1
        if self.catalog.serial != self._soa_serial:
            self._soa_serial = self.catalog.serial
            for key in list(self._soa_keys):
                self._drop(key)
                self.invalidations += 1

    def clear(self) -> None:
        """Drop every entry (in place: the server holds references to the dicts)."""
        for table in (self.plain, self.edns, self.alias):
            for entry in table.values():
                self._retire(entry)
            table.clear()
        self._deps.clear()
        self._soa_keys.clear()

    def set_synced(self) -> None:
        self._soa_serial = self.catalog.serial
        self.synced = True

    # ------------------------------------------------------------------ statistics

    def stats(self) -> tuple[dict[StatKey, int], int]:
        """(answers by (qtype, rcode, transport), cache hits), live entries included."""
        counts = dict(self.counts)
        hits = self.retired_hits
        for table in (self.plain, self.edns, self.alias):
            for entry in list(table.values()):
                for slot, transport in ((HITS_UDP, "udp"), (HITS_TCP, "tcp")):
                    if entry[slot]:
                        key = (entry[QTYPE], entry[RCODE], transport)
                        counts[key] = counts.get(key, 0) + entry[slot]
                        hits += entry[slot]
        return counts, hits

    @property
    def entries(self) -> int:
        return len(self.plain) + len(self.edns) + len(self.alias)

    def full_length(self, key: bytes, edns: bool) -> int | None:
        """Size of the cached full answer for a question key (tests and debugging)."""
        entry = (self.edns if edns else self.plain).get(key)
        return None if entry is None else entry[FULL_LEN]
