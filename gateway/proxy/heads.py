"""Request and response heads: parsed once, hop-by-hop stripped, rebuilt with one join.

Header names and values stay the bytes httptools produced: a forwarded header is four
references in a flat list (`name, ": ", value, CRLF`) and the head is one `b"".join`.
Lower-cased names are computed once per header for the checks below; routing sees them
through `LazyHeaders`, which decodes only if a rule actually looks at a header.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from http import HTTPStatus
from typing import Final

import httptools

#: RFC 9110 7.6.1 plus the legacy ones; never forwarded in either direction.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})
_REQ_SPECIAL: Final = HOP_BY_HOP | {
    b"content-length", b"host", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-forwarded-port", b"x-real-ip", b"x-request-id",
}
_TRUSTED_KEEP: Final = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"x-real-ip"})
_CANON: Final = {b"x-forwarded-proto": b"X-Forwarded-Proto", b"x-forwarded-host": b"X-Forwarded-Host",
          b"x-forwarded-port": b"X-Forwarded-Port", b"x-real-ip": b"X-Real-IP"}
#: nginx's list: not passed to the next upstream once sent, unless `non_idempotent`.
NON_IDEMPOTENT: Final = frozenset({b"POST", b"PATCH", b"LOCK"})
CRLF: Final = b"\r\n"
REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}


class Reject(Exception):
    """A request the proxy answers itself (400, 413, 414, 417, 431, 501...) and then closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class LazyHeaders(Mapping[str, str]):
    """`RequestView.headers`: lower-cased names, repeats joined with ", ", decoded on first use."""

    __slots__ = ("_raw", "_d")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._d: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        d = self._d
        if d is None:
            d = {}
            for n, v in self._raw:
                k, s = n.decode("latin-1").lower(), v.decode("latin-1")
                d[k] = d[k] + ", " + s if k in d else s
            self._d = d
        return d

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


class Peer:
    """Per client connection constants: the client address and the X-Forwarded-* lines it
    implies. `trust`, given for a --trusted-proxy peer only: which X-Forwarded-For hops are
    proxies too."""

    __slots__ = ("ip", "ip_b", "trusted", "trust", "scheme", "port_b", "fixed")

    def __init__(self, ip: str, local_port: int, scheme: str,
                 trust: Callable[[str], bool] | None = None) -> None:
        self.ip = ip
        self.ip_b = ip.encode()
        self.trust = trust
        self.trusted = trust is not None
        self.scheme = scheme.encode()
        self.port_b = str(local_port).encode()
        self.fixed = (b"X-Forwarded-Proto: " + self.scheme + CRLF + b"X-Forwarded-Port: "
                      + self.port_b + CRLF + b"X-Real-IP: " + self.ip_b + CRLF)


class RequestHead:
    """A validated request head and the pieces the upstream head is built from."""

    __slots__ = (
        "method", "path", "http10", "keep_alive", "host_raw", "host", "length", "chunked",
        "expect", "upgrade", "parts", "lower", "request_id", "te_trailers", "idempotent",
        "head_only", "client_ip",
    )

    method: bytes
    path: bytes  # origin-form target forwarded upstream
    http10: bool
    keep_alive: bool
    host_raw: bytes  # the Host value as received (X-Forwarded-Host, mirrors)
    host: str  # lower-cased, port stripped (RequestView.host)
    length: int | None  # Content-Length; None when absent
    chunked: bool
    expect: bool  # Expect: 100-continue (answered by the proxy, not forwarded)
    upgrade: bytes | None  # Upgrade value when the request asks to switch protocols
    parts: list[bytes]  # forwarded header lines, flat (name, ": ", value, CRLF, ...)
    lower: list[tuple[bytes, bytes]]  # the headers as received (LazyHeaders lower-cases them)
    request_id: bytes
    te_trailers: bool
    idempotent: bool
    head_only: bool  # HEAD: the response has no body whatever it says
    client_ip: str  # the peer's address, or behind a trusted proxy the one it forwards for

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


class RequestIds:
    """X-Request-ID values as nginx's $request_id (32 hex digits, 128 random bits), cut from
    a block made 256 at a time: formatting a 128-bit integer as hex for each request cost
    about a thousand instructions, a slice costs a few dozen."""

    def __init__(self) -> None:
        self.block = b""
        self.at = 0

    def next(self) -> bytes:
        at = self.at
        if at >= len(self.block):
            self.block = random.randbytes(4096).hex().encode()
            at = 0
        self.at = at + 32
        return self.block[at:at + 32]


REQUEST_IDS: Final = RequestIds()

_HOST_KEYS: Final[dict[bytes, str]] = {}


def host_key(raw: bytes) -> str:
    """Lower-case, strip the port (keeps IPv6 brackets); memoised, hosts repeat."""
    key = _HOST_KEYS.get(raw)
    if key is None:
        key = _host_key(raw)
        if len(_HOST_KEYS) >= 4096:
            _HOST_KEYS.clear()
        _HOST_KEYS[raw] = key
    return key


def _host_key(raw: bytes) -> str:
    h = raw.decode("latin-1").strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end > 0 else h
    i = h.rfind(":")
    return h[:i] if i >= 0 else h


def add_line(parts: list[bytes], name: bytes, value: bytes) -> None:
    """One forwarded header line into a flat head list (joined once at the end)."""
    parts.append(name)
    parts.append(b": ")
    parts.append(value)
    parts.append(CRLF)


def parse_request(
    method: bytes,
    url: bytes,
    http10: bool,
    keep_alive: bool,
    upgrade: bool,
    headers: list[tuple[bytes, bytes]],
    peer: Peer,
) -> RequestHead:
    """Validate a parsed head (llhttp already rejected most smuggling) and prepare forwarding."""
    h = RequestHead()
    h.method = method
    h.http10 = http10
    h.keep_alive = keep_alive
    h.idempotent = method not in NON_IDEMPOTENT
    h.head_only = method == b"HEAD"
    if method == b"CONNECT":
        raise Reject(405, "CONNECT is not supported by this proxy")
    parts: list[bytes] = []
    host_raw: bytes | None = None
    length: int | None = None
    chunked = expect = te_trailers = False
    upgrade_v: bytes | None = None
    xff: list[bytes] | None = None
    rid: bytes | None = None
    tokens: bytes | None = None
    trusted = peer.trusted
    kept: set[bytes] | None = None
    codes = _REQ_CODES
    for name, value in headers:
        try:
            ln = codes[name]
        except KeyError:
            ln = _code(codes, name, _REQ_SPECIAL)
        if ln is None:
            add_line(parts, name, value)
        elif ln == b"content-length":
            length = int(value)
            add_line(parts, name, value)
        elif ln == b"host":
            if host_raw is not None:
                raise Reject(400, "duplicate Host header")
            host_raw = value
        elif ln == b"x-forwarded-for":
            (xff := xff or []).append(value)
        elif ln == b"x-request-id":
            rid = value
        elif ln == b"connection":
            tokens = value if tokens is None else tokens + b"," + value
        elif ln == b"transfer-encoding":
            if chunked or value.strip().lower() != b"chunked":
                raise Reject(501, "unsupported transfer-encoding")
            chunked = True
        elif ln == b"expect":
            if value.strip().lower() != b"100-continue":
                raise Reject(417, "unsupported expectation")
            expect = not http10
        elif ln == b"te":
            te_trailers = b"trailers" in value.lower()
        elif ln == b"upgrade":
            upgrade_v = value
        elif ln in _TRUSTED_KEEP:
            if trusted:
                (kept := kept or set()).add(ln)
                add_line(parts, name, value)
    if host_raw is None:
        if not http10:
            raise Reject(400, "missing Host header")
        host_raw = b""
    if url[:1] != b"/" and url != b"*":
        try:
            u = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise Reject(400, "invalid request target") from None
        if u.host is None:
            raise Reject(400, "invalid request target")
        host_raw = u.host + (b":%d" % u.port if u.port else b"")
        url = (u.path or b"/") + (b"?" + u.query if u.query else b"")
    if tokens is not None:
        drop = _named(tokens)
        if drop:
            parts = _without(parts, drop)
    h.path = url
    h.host_raw = host_raw
    h.host = host_key(host_raw)
    h.length = length
    h.chunked = chunked
    h.expect = expect and (chunked or bool(length))
    h.upgrade = upgrade_v if upgrade and upgrade_v is not None else None
    h.te_trailers = te_trailers
    h.lower = headers
    h.request_id = rid if rid else REQUEST_IDS.next()
    # X-Forwarded-*: XFF always appended; the others ours unless a trusted hop set them.
    h.client_ip = peer.ip
    if xff:
        parts += (b"X-Forwarded-For: ", b", ".join(xff), b", ", peer.ip_b, CRLF)
        if trusted:
            h.client_ip = forwarded_client(xff, peer.trust) or peer.ip
    else:
        parts += (b"X-Forwarded-For: ", peer.ip_b, CRLF)
    if not trusted:
        parts += (peer.fixed, b"X-Forwarded-Host: ", host_raw, CRLF)
    else:
        ours = {b"x-forwarded-proto": peer.scheme, b"x-forwarded-port": peer.port_b,
                b"x-real-ip": h.client_ip.encode(), b"x-forwarded-host": host_raw}
        for ln, v in ours.items():
            if kept is None or ln not in kept:
                parts += (_CANON[ln], b": ", v, CRLF)
    parts += (b"X-Request-ID: ", h.request_id, CRLF)
    h.parts = parts
    return h


def forwarded_client(values: list[bytes], trust: Callable[[str], bool] | None) -> str | None:
    """The client a trusted proxy forwards for (nginx's real_ip with `real_ip_recursive on`):
    from the right of X-Forwarded-For, the first address that is not a trusted proxy too
    (all trusted: the leftmost). A port is dropped (`192.0.2.7:4711`, `[2001:db8::7]:4711`:
    some balancers add one). None when an address on the way is not an IP address: the peer
    stays the client, as nginx's realip declines."""
    hops = [hop.strip() for hop in b",".join(values).decode("latin-1").split(",")]
    found: str | None = None
    for hop in reversed(hops):
        if not hop:
            continue
        if hop[0] == "[":  # [v6] or [v6]:port
            inside, _, after = hop[1:].partition("]")
            if not after or (after[0] == ":" and after[1:].isdigit()):
                hop = inside
        elif hop.count(":") == 1:  # v4:port (a bare v6 address has more colons)
            address, _, port = hop.partition(":")
            if port.isdigit():
                hop = address
        try:
            found = str(ipaddress.ip_address(hop))
        except ValueError:
            return None
        if trust is None or not trust(found):
            return found
    return found


#: Raw header name -> its lower-cased form when the proxy must look at it, else None.
#: Names repeat across requests, so one dict hit replaces lower() and a set lookup per header.
_REQ_CODES: Final[dict[bytes, bytes | None]] = {}
_RESP_CODES: Final[dict[bytes, bytes | None]] = {}
_RESP_SPECIAL: Final = HOP_BY_HOP | {b"content-length"}
#: Lengths of those names: most response headers (Server, Date, Content-Type...) are ruled
#: out by their length alone, before a dict lookup hashes the (new) name bytes.
_RESP_SPECIAL_LENGTHS: Final = frozenset(len(n) for n in _RESP_SPECIAL)


def _code(codes: dict[bytes, bytes | None], name: bytes, special: frozenset[bytes]) -> bytes | None:
    ln = name.lower()
    code = ln if ln in special else None
    if len(codes) < 4096:
        codes[name] = code
    return code


_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b"upgrade", b"Keep-Alive", b"Close", b"Upgrade"})


def _named(tokens: bytes) -> set[bytes]:
    """Header names listed in Connection (besides keep-alive/close/upgrade): hop-by-hop too."""
    if tokens in _PLAIN_CONNECTION:
        return set()
    return {t.strip().lower() for t in tokens.split(b",")} - {b"keep-alive", b"close", b"upgrade", b""}


#: The header names CORS lines (gateway/routing/cors.py) replace in an upstream's answer.
CORS_HEADER_NAMES: Final = frozenset({
    b"access-control-allow-origin", b"access-control-allow-credentials",
    b"access-control-allow-methods", b"access-control-allow-headers",
    b"access-control-expose-headers", b"access-control-max-age"})


def _without(parts: list[bytes], names: AbstractSet[bytes]) -> list[bytes]:
    """Drop the header lines whose name (lower-cased) is in `names` (those named in Connection)."""
    out: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].lower() not in names:
            out += parts[i : i + 4]
    return out


def with_set_headers(parts: list[bytes], set_headers: tuple[tuple[str, str], ...],
                     drop: frozenset[str] = frozenset()) -> list[bytes]:
    """RouteDecision.set_headers: replace same-named headers, and remove those named in
    `drop` (rare path, copies the list)."""
    names = {n.lower().encode("latin-1") for n, _ in set_headers}
    names |= {n.lower().encode("latin-1") for n in drop}
    out = _without(parts, names)
    for n, v in set_headers:
        out += (n.encode("latin-1"), b": ", v.encode("latin-1"), CRLF)
    return out


def upstream_head(h: RequestHead, parts: list[bytes], host: bytes, path: bytes | None = None) -> bytes:
    """The request head sent upstream: HTTP/1.1, keep-alive, our framing."""
    out = [h.method, b" ", path or h.path, b" HTTP/1.1\r\nHost: ", host, CRLF]
    out += parts
    if h.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if h.te_trailers:
        out.append(b"TE: trailers\r\n")
    if h.upgrade is not None:
        out += (b"Connection: upgrade\r\nUpgrade: ", h.upgrade, CRLF)
    out.append(CRLF)
    return b"".join(out)


def lines_at(h: RequestHead, host: bytes, path: bytes | None = None) -> int:
    """Where `upstream_head(h, parts, host, path)`'s header lines begin (after the request
    line and Host); for a request without a body they run from there to the end unchanged."""
    return len(h.method) + len(path or h.path) + len(host) + 20


# -- responses -----------------------------------------------------------------------------

_STATUS_LINES: Final[dict[int, bytes]] = {}


def status_line(status: int, reason: bytes = b"") -> bytes:
    """`HTTP/1.1 <status> <standard phrase>` (cached per status), or with `reason`."""
    if reason:
        return b"HTTP/1.1 %d %s\r\n" % (status, reason)
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))
        if len(_STATUS_LINES) < 1024:
            _STATUS_LINES[status] = line
    return line


class ResponseInfo:
    """A response head as it is parsed: the lines to forward and what they say about framing.

    Filled one header at a time from the parser's callback (`add`), so no list of header
    tuples is built and walked again; `finish` drops the headers Connection names.
    """

    __slots__ = ("parts", "length", "chunked", "upgrade", "tokens")

    def __init__(self) -> None:
        # parts[0] is the status line's slot (response_head fills it): one list, one join
        self.parts: list[bytes] = [b""]
        self.length: bytes | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.tokens: bytes | None = None

    def add(self, name: bytes, value: bytes) -> None:
        if len(name) not in _RESP_SPECIAL_LENGTHS:
            ln = None
        else:
            codes = _RESP_CODES
            try:
                ln = codes[name]
            except KeyError:
                ln = _code(codes, name, _RESP_SPECIAL)
        parts = self.parts
        if ln is None:
            add_line(parts, name, value)
        elif ln == b"content-length":
            self.length = value
            add_line(parts, name, value)
        elif ln == b"transfer-encoding":
            self.chunked = value.rstrip().lower().endswith(b"chunked")
        elif ln == b"connection":
            self.tokens = value if self.tokens is None else self.tokens + b"," + value
        elif ln == b"upgrade":
            self.upgrade = value

    def finish(self) -> ResponseInfo:
        if self.tokens is not None:
            drop = _named(self.tokens)
            if drop:
                self.parts = [b"", *_without(self.parts[1:], drop)]
        return self


def response_head(line: bytes, parts: list[bytes], extra: bytes) -> bytes:
    """The head sent to the client; fills and extends ResponseInfo.parts (used once)."""
    parts[0] = line
    parts.append(extra)
    parts.append(CRLF)
    return b"".join(parts)


def local_response(status: int, text: str, *, close: bool, head_only: bool = False,
                   request_id: bytes | None = None, location: str | None = None,
                   extra: bytes = b"") -> bytes:
    """A short plain-text response the proxy generates itself (errors, 404, 503, redirects)."""
    if status == 204:  # no body (a CORS preflight); its lines come in `extra`
        body = b""
        out = [status_line(204, b""), b"Content-Length: 0\r\n"]
    else:
        body = text.encode() + b"\n"
        out = [status_line(status, b""), b"Content-Type: text/plain; charset=utf-8\r\n",
               b"Content-Length: %d\r\n" % len(body)]
    if location is not None:  # latin-1 keeps every byte; CR/LF never reach a header line
        out += (b"Location: ", location.encode("latin-1", "replace").translate(None, b"\r\n"), CRLF)
    if request_id is not None:
        out += (b"X-Request-ID: ", request_id, CRLF)
    if extra:  # whole header lines (Strict-Transport-Security, CORS)
        out.append(extra)
    if close:
        out.append(b"Connection: close\r\n")
    out.append(CRLF)
    if not head_only:
        out.append(body)
    return b"".join(out)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: list[tuple[bytes, bytes]] | None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    out = [b"0\r\n"]
    for name, value in trailers:
        out += (name, b": ", value, CRLF)
    out.append(CRLF)
    return b"".join(out)
