"""Shared states and constants of an exchange (split out so the parts import them)."""

INF = float("inf")
NEW, CONNECTING, SENT, STREAMING, DRAINING, BACKOFF, DONE = range(7)  # Exchange.phase
M_NONE, M_LENGTH, M_CHUNK, M_RAW = range(4)  # response framing towards the client
PAUSE_PIPELINE, PAUSE_UPSTREAM, PAUSE_PENDING = 1, 2, 4  # why client reading is paused (bits)
