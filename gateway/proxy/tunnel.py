"""After a 101 Switching Protocols: splice raw bytes both ways (WebSocket and friends).

No parsing and no timers: each side's data is written to the other; write pressure on one
side pauses reading on the other (pool.UpstreamConnection and client.ClientConnection do
that in pause_writing); a FIN is passed on as a half-close, the second one closes both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.proxy.client import ClientConnection
    from gateway.proxy.pool import UpstreamConnection


def splice(client: ClientConnection, conn: UpstreamConnection, rest: bytes) -> None:
    """Join the two connections; `rest` is what the upstream sent right after its 101 head."""
    client.tunnel = conn
    conn.tunnel = client
    if rest:
        client.write(rest)
    client.flush()  # the 101 head (held for the end of the turn) goes before any spliced byte
    early = client.upgrade_buf
    client.upgrade_buf = None
    if early:
        conn.transport.writelines(early)
    client.resume_reading(-1)
    if client.write_paused:
        conn.pause_reading()
    else:
        conn.resume_reading()


def half_close(client: ClientConnection, conn: UpstreamConnection, from_client: bool) -> bool:
    """One side sent FIN: pass it on (keep the other direction open) or, the second time, close."""
    client.tunnel_eofs += 1
    other = conn.transport if from_client else client.transport
    if client.tunnel_eofs >= 2 or other.is_closing() or not other.can_write_eof():
        client.transport.close()
        conn.transport.close()
        return False
    other.write_eof()
    return True
