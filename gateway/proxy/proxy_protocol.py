"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that a load
balancer in front writes before the client's first byte, naming the client's address.

`parse_proxy_header(data)` reads it from the start of `data`: a `ProxyHeader` (its length and
the source address; `source` None when the header says to use the connection's own
addresses: v1 `UNKNOWN`, v2 `LOCAL` such as a balancer's health check, or an address family
without an IP), `NEED_MORE` while it could still be one, or `ProxyProtocolError` naming what is
wrong. Pure; the listener (gateway/proxy/listener.py) peeks, parses, then takes exactly
`length` bytes off the socket so the HTTP request or the TLS ClientHello behind it stays.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

#: parse_proxy_header: not all of the header is there yet.
NEED_MORE: Final = "\0more"

V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # the longest v1 line, CRLF included (the specification's bound)
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: Longest v2 header accepted (16-byte fixed part + addresses + TLVs). Balancers add a few
#: TLVs (AWS: the VPC endpoint id; TLS details); nginx reads the header into a similarly
#: small buffer.
V2_MAX: Final = 4096
#: Bytes to peek to be sure of holding a whole header.
PEEK: Final = V2_MAX

_V2_ADDRESS_SIZES: Final = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX: src+dst (+ports)


class ProxyProtocolError(ValueError):
    """A connection that should start with a PROXY protocol header does not."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    length: int  # bytes of the header, to take off the stream
    source: tuple[str, int] | None  # the client's (address, port); None: the connection's own
    version: int


def parse_proxy_header(data: bytes) -> ProxyHeader | str:
    """The header at the start of `data`, NEED_MORE, or ProxyProtocolError."""
    if not data:
        return NEED_MORE
    if data[0] == 0x0D:
        return _v2(data)
    if data[0] == 0x50:  # "P"
        return _v1(data)
    raise ProxyProtocolError(f"no PROXY protocol header: the connection starts with {data[:16]!r}")


def _v1(data: bytes) -> ProxyHeader | str:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if not V1_PREFIX.startswith(data[:6]):
            raise ProxyProtocolError(f"no PROXY protocol header: the connection starts with {data[:16]!r}")
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"PROXY protocol v1 line without CRLF in its first {V1_MAX} bytes")
        return NEED_MORE
    line = data[:end]
    if not line.startswith(V1_PREFIX):
        raise ProxyProtocolError(f"no PROXY protocol header: the connection starts with {data[:16]!r}")
    try:
        fields = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY protocol v1 line is not ASCII") from None
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(end + 2, None, 1)
    if len(fields) != 6:
        raise ProxyProtocolError(f"PROXY protocol v1 line {line[:V1_MAX]!r}: expected "
                                 "'PROXY TCP4|TCP6 <source> <destination> <source port> <destination port>'")
    _, proto, src, dst, sport, dport = fields
    version = {"TCP4": 4, "TCP6": 6}.get(proto)
    if version is None:
        raise ProxyProtocolError(f"PROXY protocol v1 protocol {proto!r}: expected TCP4, TCP6 or UNKNOWN")
    for what, text in (("source", src), ("destination", dst)):
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise ProxyProtocolError(f"PROXY protocol v1 {what} address {text!r} is not an IP address") from None
        if addr.version != version:
            raise ProxyProtocolError(f"PROXY protocol v1 {what} address {text!r} is not {proto}")
    ports = []
    for what, text in (("source", sport), ("destination", dport)):
        if not text.isdigit() or len(text) > 5 or int(text) > 65535:
            raise ProxyProtocolError(f"PROXY protocol v1 {what} port {text!r} is not 0-65535")
        ports.append(int(text))
    return ProxyHeader(end + 2, (str(ipaddress.ip_address(src)), ports[0]), 1)


def _v2(data: bytes) -> ProxyHeader | str:
    head = data[:12]
    if not V2_SIGNATURE.startswith(head):
        raise ProxyProtocolError(f"no PROXY protocol header: the connection starts with {data[:16]!r}")
    if len(data) < 16:
        return NEED_MORE
    ver_cmd, family, size = data[12], data[13], int.from_bytes(data[14:16], "big")
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY protocol v2 version {ver_cmd >> 4}: expected 2")
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProxyProtocolError(f"PROXY protocol v2 command {command}: expected 0 (LOCAL) or 1 (PROXY)")
    total = 16 + size
    if total > V2_MAX:
        raise ProxyProtocolError(f"PROXY protocol v2 header of {total} bytes: at most {V2_MAX} are accepted")
    if len(data) < total:
        return NEED_MORE
    if command == 0:  # LOCAL: the balancer's own connection (health checks)
        return ProxyHeader(total, None, 2)
    kind = family >> 4
    need = _V2_ADDRESS_SIZES.get(kind, 0)
    if size < need:
        raise ProxyProtocolError(f"PROXY protocol v2 address block of {size} bytes: family {kind} needs {need}")
    body = data[16:total]
    if kind == 0x1:
        return ProxyHeader(total, (str(ipaddress.IPv4Address(body[:4])), int.from_bytes(body[8:10], "big")), 2)
    if kind == 0x2:
        return ProxyHeader(total, (str(ipaddress.IPv6Address(body[:16])), int.from_bytes(body[32:34], "big")), 2)
    if kind in (0x0, 0x3):  # UNSPEC, UNIX: no IP address to name; the connection's own is used
        return ProxyHeader(total, None, 2)
    raise ProxyProtocolError(f"PROXY protocol v2 address family {kind}: expected 0-3")
