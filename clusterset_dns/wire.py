"""DNS wire format: the pre-rendered answer cache and its fast path (DESIGN.md section 5).

An answer depends only on (lower-cased qname, qtype, EDNS or not) and the catalog, so
each is rendered once and kept as bytes. A cached answer is served by concatenating

    query ID | cached flags+counts (RD copied) | the query's question bytes | cached sections

so the question is echoed exactly as received (0x20 case randomisation survives).
Owner names in the cached sections are compression pointers *into the question* (every
in-zone owner is the qname or one of its suffixes, e.g. the SOA's zone), and the offsets
are the same for every spelling of a name, so one entry serves all case variants and the
answers spell names the way the client did (digest G1).

Entries are lists (mutable hit counters, fixed slots):
    [pre_rd0, pre_rd1, tail, u_pre_rd0, u_pre_rd1, u_tail, full_len, hits_udp, hits_tcp,
     qtype, rcode, cuts] (+ the responder's bookkeeping slots)
`pre_*` are the 10 header bytes after the ID; the `u_*` variant is the answer as it goes
to a UDP client with the plain 512-byte limit. Answers over a client's UDP limit are cut
per RFC 2181 section 9 (`variant`): the additional section goes first (whole RRsets
from its end), then optional authority, and TC is set only when the answer section
itself does not fit; a TC answer keeps the whole answer RRsets that fit (no partial
RRset ever reaches a cache). Parsing here is by hand; dnslib is used only on the slow path.
"""

from __future__ import annotations

import ipaddress
import struct
from bisect import bisect_right

from clusterset_dns.zone import AAAA, NS, OPT, RR, SOA, SRV, TXT, A, Answer, Name, Soa, Srv

#: Our EDNS UDP payload size, and the most we send over UDP whatever the client offers
#: (the DNS flag day 2020 value: no IP fragmentation on common paths).
EDNS_PAYLOAD = 1232
#: Without EDNS (RFC 1035).
PLAIN_LIMIT = 512

#: Header counts of the queries the fast path serves: QD=1 and nothing else / one OPT.
PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
EDNS_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"

# Entry slots.
PRE0, PRE1, TAIL, UPRE0, UPRE1, UTAIL, FULL_LEN, HITS_UDP, HITS_TCP, QTYPE, RCODE, CUTS = range(12)

_RR_HEAD = struct.Struct("!HHIH")
_OPT_RR = b"\x00" + _RR_HEAD.pack(OPT, EDNS_PAYLOAD, 0, 0)


def fast_answer(plain: dict, edns: dict, alias: dict, data: bytes, tcp: bool) -> bytes | None:
    """The cached answer to `data`, or None when the slow path must look (miss, odd packet).

    Serves only the common shapes: a standard query (QR=0, opcode 0) with one question
    and either nothing else or exactly one well-formed EDNS version 0 OPT record. A hit
    proves the question well-formed: its bytes equal (case aside) a validated question.

    EDNS over UDP first tries `alias`: keyed by everything after the header (question
    *and* an option-less OPT record, as stubs, forwarders and dnsperf send it), holding
    the variant (whole or truncated) already chosen for that OPT's payload size; one
    lookup, like the plain path. Only OPT records whose bytes survive lower-casing without
    changing the size limit are aliased (see `Responder`), so the key proves the packet.
    """
    counts = data[4:12]
    if counts == PLAIN_COUNTS:
        if data[2] & 0xF8:
            return None
        q = data[12:]
        e = plain.get(q.lower())
        if e is None:
            return None
        rd = data[2] & 1
        if tcp:
            e[HITS_TCP] += 1
        else:
            e[HITS_UDP] += 1
            if e[FULL_LEN] > PLAIN_LIMIT:
                return data[:2] + e[UPRE0 + rd] + q + e[UTAIL]
        return data[:2] + e[rd] + q + e[TAIL]
    if counts == EDNS_COUNTS:
        if data[2] & 0xF8:
            return None
        if not tcp:
            e = alias.get(data[12:].lower())
            if e is not None:
                e[HITS_UDP] += 1
                return data[:2] + e[data[2] & 1] + data[12:len(data) - 11] + e[TAIL]
            if data[-2:] == b"\x00\x00" and aliasable(data[-8], data[-7]):
                return None  # an OPT seen first: the slow path files an alias for it
        # The first zero byte after the header ends the qname: any earlier zero would sit
        # inside a label, and then these bytes cannot equal a validated cached question.
        qe = data.find(0, 12) + 5
        n = len(data)
        if qe < 17 or qe + 11 > n or data[qe:qe + 3] != b"\x00\x00\x29" or data[qe + 6]:
            return None  # no question end, not an OPT, or EDNS version != 0
        rdlen = (data[qe + 9] << 8) | data[qe + 10]
        if qe + 11 + rdlen != n:
            return None
        if rdlen and (rdlen < 4 or rdlen != 4 + ((data[qe + 13] << 8) | data[qe + 14])):
            return None  # not exactly one well-formed option: the slow path checks them all
        q = data[12:qe]
        e = edns.get(q.lower())
        if e is None:
            return None
        rd = data[2] & 1
        if tcp:
            e[HITS_TCP] += 1
        else:
            e[HITS_UDP] += 1
            size = (data[qe + 3] << 8) | data[qe + 4]
            limit = PLAIN_LIMIT if size < PLAIN_LIMIT else EDNS_PAYLOAD if size > EDNS_PAYLOAD else size
            if e[FULL_LEN] > limit:
                cut = variant(e, limit)
                return data[:2] + cut[rd] + q + cut[2]
        return data[:2] + e[rd] + q + e[TAIL]
    return None


def aliasable(size_hi: int, size_lo: int) -> bool:
    """Whether an EDNS payload size keeps its UDP limit through `bytes.lower()`.

    Lower-casing folds a letter byte onto its lower-case twin (32 apart). Only sizes
    512-1232 are their own limit, and only there (high byte 2, 3 or 4, low byte a letter)
    do two sizes that share a lower-cased key have different limits.
    """
    return not (2 <= size_hi <= 4 and 0x61 <= (size_lo | 0x20) <= 0x7A)


# ---------------------------------------------------------------------------- rendering


class _Writer:
    """Appends records after the question, compressing names against what is written."""

    def __init__(self, qname: Name, qlen: int) -> None:
        self.buf = bytearray()
        self.base = 12 + qlen  # message offset of buf[0]
        self.comp: dict[Name, int] = {}
        offset = 12
        for i, label in enumerate(qname):
            self.comp.setdefault(qname[i:], offset)
            offset += 1 + len(label.encode("latin-1"))

    def name(self, labels: Name, compress: bool = True) -> None:
        for i, label in enumerate(labels):
            suffix = labels[i:]
            if compress and suffix in self.comp:
                self.buf += struct.pack("!H", 0xC000 | self.comp[suffix])
                return
            here = self.base + len(self.buf)
            if here < 0x4000:
                self.comp.setdefault(suffix, here)
            raw = label.encode("latin-1")
            self.buf.append(len(raw))
            self.buf += raw
        self.buf.append(0)

    def rr(self, name: Name, rtype: int, ttl: int, rdata: object) -> None:
        self.name(name)
        head = len(self.buf)
        self.buf += _RR_HEAD.pack(rtype, 1, ttl, 0)
        start = len(self.buf)
        if rtype == A:
            self.buf += ipaddress.IPv4Address(rdata).packed  # type: ignore[arg-type]
        elif rtype == AAAA:
            self.buf += ipaddress.IPv6Address(rdata).packed  # type: ignore[arg-type]
        elif rtype == NS:
            self.name(rdata)  # type: ignore[arg-type]
        elif rtype == SOA:
            assert isinstance(rdata, Soa)
            self.name(rdata.mname)
            self.name(rdata.rname)
            self.buf += struct.pack("!IIIII", rdata.serial, rdata.refresh, rdata.retry,
                                    rdata.expire, rdata.minimum)
        elif rtype == SRV:
            assert isinstance(rdata, Srv)
            self.buf += struct.pack("!HHH", rdata.priority, rdata.weight, rdata.port)
            self.name(rdata.target, compress=False)  # RFC 2782: no compression in SRV
        elif rtype == TXT:
            raw = str(rdata).encode()
            self.buf.append(len(raw))
            self.buf += raw
        else:
            raise ValueError(f"cannot render type {rtype}")
        struct.pack_into("!H", self.buf, head + 8, len(self.buf) - start)


def _flags(answer: Answer) -> tuple[int, int]:
    hi = 0x80 | (0x04 if answer.aa else 0)  # QR, AA (RD is added per query, TC per cut)
    return hi, answer.rcode & 0x0F


def _rrsets(records: tuple[RR, ...]) -> list[list[RR]]:
    """Records grouped into RRsets (owner, type), in order of first appearance."""
    groups: dict[tuple[Name, int], list[RR]] = {}
    for rr in records:
        groups.setdefault((rr.name, rr.rtype), []).append(rr)
    return list(groups.values())


#: The largest DNS message (the TCP length prefix is 16 bits).
MAX_MESSAGE = 65535


def render(answer: Answer, qname: Name, qlen: int, edns: bool, qtype: int) -> list:
    """A cache entry for `answer` to a question of `qlen` bytes (qname wire length + 4).

    Records past 64 KiB are left out (a valid subset: every address of a huge Headless
    service cannot be sent in one message anyway), the additional section first. Each
    section is written RRset by RRset; the end of each RRset is a place where an answer
    may be cut for a UDP client (`variant`). Cuts are kept only when the whole answer
    exceeds 512 bytes, and only those that fit `EDNS_PAYLOAD` (no UDP limit is larger).
    """
    w = _Writer(qname, qlen)
    opt = _OPT_RR if edns else b""
    base = 12 + qlen + len(opt)  # the message with no records
    room = MAX_MESSAGE - base
    sent = [0, 0, 0]
    # Without TC a message must hold its answer section, or, when that is empty, its
    # authority (the SOA of a negative answer, RFC 2308); `required` is where that ends.
    need = 0 if answer.answer else 1 if answer.authority else -1
    required: int | None = 0 if need < 0 else None
    cuts: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)]  # (body bytes kept, an, ns, ar)
    clipped = False
    for i, section in enumerate((answer.answer, answer.authority, answer.additional)):
        for rrset in _rrsets(section):
            for rr in rrset:
                mark = len(w.buf)
                w.rr(rr.name, rr.rtype, rr.ttl, rr.rdata)
                if len(w.buf) > room:
                    del w.buf[mark:]  # later names never point past here: nothing more is written
                    clipped = True
                    break
                sent[i] += 1
            if clipped:
                break
            if base + len(w.buf) <= EDNS_PAYLOAD:
                cuts.append((len(w.buf), sent[0], sent[1], sent[2]))
        if clipped:
            break
        if i == need:
            required = len(w.buf)
    tail = bytes(w.buf) + opt
    full_len = base + len(w.buf)
    counts = struct.pack("!HHHH", 1, sent[0], sent[1], sent[2] + (1 if edns else 0))
    hi, lo = _flags(answer)
    pre0, pre1 = bytes((hi, lo)) + counts, bytes((hi | 1, lo)) + counts
    entry = [pre0, pre1, tail, pre0, pre1, tail, full_len, 0, 0, qtype, answer.rcode, None]
    if full_len > PLAIN_LIMIT:
        # A cut short of `required` sets TC; those cut only between answer RRsets.
        kept = [(body, an, ns, ar, required is None or body < required)
                for body, an, ns, ar in cuts
                if required is None or body >= required or not (ns or ar)]
        sizes = [base + c[0] for c in kept]
        entry[CUTS] = (sizes, kept, opt, hi, lo, {})
        entry[UPRE0:UTAIL + 1] = variant(entry, PLAIN_LIMIT)
    return entry


def variant(entry: list, limit: int) -> tuple[bytes, bytes, bytes]:
    """(pre_rd0, pre_rd1, tail) of `entry` cut for a UDP limit its whole answer exceeds.

    The longest cut that fits (RFC 2181 section 9): additional RRsets are dropped from
    the end, then authority where the answer section holds the answer; TC is set only
    when the answer section itself does not fit, and then the whole answer RRsets that
    fit are kept (none for the usual one-RRset answer). Built once per cut, on demand.

    Why whole RRsets with TC rather than an always-empty answer: whoever honours TC
    (glibc, unbound, dnsmasq, current CoreDNS forward, dnspython, dig) retries over TCP
    either way, and unbound cuts its own replies just so; whoever does not (musl before
    1.2.4 has no TCP fallback; CoreDNS forward once passed such replies on without TC,
    coredns/coredns#4183) uses the UDP reply as it is, and then complete RRsets beat an
    empty answer taken for NODATA, and a partial RRset would be taken for the whole.
    """
    sizes, kept, opt, hi, lo, built = entry[CUTS]
    i = bisect_right(sizes, limit) - 1  # the empty cut (<= 12 + 259 + 11 bytes) always fits
    cut = built.get(i)
    if cut is None:
        body, an, ns, ar, tc = kept[i]
        if tc:
            hi |= 0x02
        counts = struct.pack("!HHHH", 1, an, ns, ar + (1 if opt else 0))
        cut = built[i] = (bytes((hi, lo)) + counts, bytes((hi | 1, lo)) + counts,
                          entry[TAIL][:body] + opt)
    return cut


def assemble(entry: list, data: bytes, qe: int, limit: int | None) -> bytes:
    """The reply to `data` (question ending at `qe`) from an entry, cut to fit `limit`."""
    rd = data[2] & 1
    if limit is not None and entry[FULL_LEN] > limit:
        cut = variant(entry, limit)
        return data[:2] + cut[rd] + data[12:qe] + cut[2]
    return data[:2] + entry[rd] + data[12:qe] + entry[TAIL]


def header_reply(data: bytes, rcode: int) -> bytes:
    """A header-only reply (FORMERR, NOTIMP): ID, opcode and RD kept, QR set, no sections."""
    return data[:2] + bytes((0x80 | (data[2] & 0x79), rcode & 0x0F)) + b"\x00" * 8


def badvers_reply(data: bytes, qe: int) -> bytes:
    """RFC 6891: an EDNS version we do not speak -> BADVERS (extended RCODE 16) in our OPT."""
    opt = b"\x00" + _RR_HEAD.pack(OPT, EDNS_PAYLOAD, 1 << 24, 0)
    return (data[:2] + bytes((0x80 | (data[2] & 0x01), 0)) + b"\x00\x01\x00\x00\x00\x00\x00\x01"
            + data[12:qe] + opt)
