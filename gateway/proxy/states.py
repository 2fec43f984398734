"""Shared states and constants of an exchange (split out so the parts import them).

`Final` lets the compiled modules (setup.py) use them as constants, not global lookups.
"""

from typing import Final

INF: Final = float("inf")
# Exchange.phase
NEW: Final = 0
CONNECTING: Final = 1
SENT: Final = 2
STREAMING: Final = 3
DRAINING: Final = 4
BACKOFF: Final = 5
DONE: Final = 6
# response framing towards the client
M_NONE: Final = 0
M_LENGTH: Final = 1
M_CHUNK: Final = 2
M_RAW: Final = 3
# why client reading is paused (bits)
PAUSE_PIPELINE: Final = 1
PAUSE_UPSTREAM: Final = 2
PAUSE_PENDING: Final = 4
