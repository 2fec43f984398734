"""A pod's answers often repeat byte for byte: the same status and headers, the same length,
and a Date line that changes once a second. `KnownAnswer` keeps what llhttp and
`ResponseInfo` made of the last such head on a connection, so an answer whose head and body
arrive whole in one read, with that exact head, is handed to the owner without llhttp's ~6
header callbacks and without a `ResponseInfo` filled one line at a time.

The owner sees the same calls, in the same order and with the same arguments, as llhttp
would make. llhttp never sees such an answer, which leaves it where it was: between messages.
"""

from __future__ import annotations

from typing import Final

from gateway.proxy.heads import ResponseInfo

#: A connection whose learned heads are replaced this many times without one being used
#: (heads that differ every time: cookies, ids, ETags) stops learning.
BARREN_LIMIT: Final = 8


class KnownAnswer:
    __slots__ = ("raw", "status", "parts", "length", "length_b", "keep_alive", "hits")

    def __init__(self, raw: bytes, status: int, parts: list[bytes], length: int, length_b: bytes,
                 keep_alive: bool) -> None:
        self.raw = raw  # the head as received, up to and with its blank line
        self.status = status
        self.parts = parts  # ResponseInfo.parts once finished: copied for each use
        self.length = length
        self.length_b = length_b
        self.keep_alive = keep_alive
        self.hits = 0

    def info(self) -> ResponseInfo:
        """A ResponseInfo as llhttp's callbacks would have filled it for this head."""
        info = ResponseInfo()
        info.parts = self.parts.copy()  # response_head fills and extends it
        info.length = self.length_b
        return info


def learn(data: bytes, status: int, info: ResponseInfo, keep_alive: bool) -> KnownAnswer | None:
    """What to remember of an answer whose head starts `data` (llhttp parsed it, `info` is
    finished and not yet used): None unless its framing is a plain Content-Length."""
    length_b = info.length
    if length_b is None or info.chunked or info.upgrade is not None or status < 200 or not keep_alive:
        return None
    if status == 204 or status == 304:  # no body whatever Content-Length says: llhttp's framing
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:  # (bare-LF line ends: not learned)
        return None
    try:
        length = int(length_b)
    except ValueError:
        return None
    return KnownAnswer(data[:end + 4], status, info.parts.copy(), length, length_b, keep_alive)
