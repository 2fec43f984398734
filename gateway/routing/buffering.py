"""ingress-nginx's buffering annotations (`proxy-buffering`, `proxy-request-buffering`,
`proxy-buffer-size`, `proxy-buffers-number`, `proxy-max-temp-file-size`,
`client-body-buffer-size`): accepted and checked, with no setting of their own to change.

The gateway streams bodies both ways and never spools one to disk: what it reads from one
side is written to the other as it comes, and reading pauses while the other side's write
buffer is full (the flow control of gateway/proxy/client.py). That is nginx with
`proxy-buffering off` and `proxy-request-buffering off`, the values ingress-nginx users set
for streaming APIs; the other values name nginx memory and temp-file sizes that have no
counterpart here. So an Ingress carrying them (most migrated ones do) is served as it is,
without a reported problem; a value nginx would refuse is reported and ignored.
"""

from __future__ import annotations

import re
from typing import Final

from .values import Annotations

#: The on/off ones, then the sizes, then the count.
SWITCHES: Final = ("proxy-buffering", "proxy-request-buffering")
SIZES: Final = ("proxy-buffer-size", "proxy-max-temp-file-size", "client-body-buffer-size")
COUNTS: Final = ("proxy-buffers-number",)
BUFFERING_KEYS: Final = frozenset(SWITCHES + SIZES + COUNTS)

#: nginx sizes: bytes, or with a k/m/g suffix (either case).
SIZE: Final = re.compile(r"^(\d+)([kKmMgG]?)$")
UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int | None:
    """An nginx size in bytes ("8m", "512k", "4096"), or None when it is not one."""
    m = SIZE.match(text)
    return None if m is None else int(m.group(1)) * UNITS[m.group(2).lower()]


def check_buffering(ann: Annotations) -> None:
    """Report the values nginx would refuse; the rest need nothing (see the module text)."""
    for key in SWITCHES:
        found = ann.string(key)
        if found is not None and found[1].lower() not in ("on", "off"):
            ann.problem(found[0], f"{found[1]!r} is not 'on' or 'off'; ignored")
    for key in SIZES:
        found = ann.string(key)
        if found is not None and parse_size(found[1]) is None:
            ann.problem(found[0], f"{found[1]!r} is not a size like '8k' or '1m'; ignored")
    for key in COUNTS:
        ann.integer(key, low=1, high=1024)
