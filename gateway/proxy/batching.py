"""When held writes leave: at the end of the loop turn, or at the end of the event that made them.

Under load a loop turn handles many reads. Holding every write until the turn's end gives one
send per connection for the whole turn, and the peer (a pod, wrk) wakes once for the turn's
worth rather than once per request. At light load a turn handles one read, so the hold buys
nothing and costs a `call_soon` plus a loop pass before the bytes leave, on every turn.

`WriteBatch` picks per turn. It starts by holding to the turn's end and counts how many
connections each held turn wrote to. After `QUIET_TURNS` held turns in a row with one
connection each, writes leave at the end of the event that made them (a client or upstream
`data_received`, bracketed by `begin`/`end`), still gathered per connection, so a response's
head and body go in one send. Every `SAMPLE_EVERY`th write in that mode holds the rest of its
turn again, to count it; two or more connections in it means back to holding. The period is
prime, so that a sample does not always fall on the same place in a repeating pattern (such as
the last read of every turn, which would see none after it). A write made outside a bracketed
event (a timer, a connect) is always held to the turn's end.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from gateway.proxy.client import ClientConnection
    from gateway.proxy.pool import UpstreamConnection

#: Held turns in a row with one connection written to before writes leave per event.
QUIET_TURNS: Final = 8
#: In per-event mode, one write in this many holds the rest of its turn, to see whether load grew.
SAMPLE_EVERY: Final = 31


class WriteBatch:
    """The connections with writes held (each connection keeps its own pieces) and the mode."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clients: list[ClientConnection] = []
        self.upstreams: list[UpstreamConnection] = []
        self.per_event = False  # writes leave at the end of their event, not of the turn
        self.held = False  # an end-of-turn send is scheduled: everything waits for it
        self.in_event = False  # inside a bracketed handler (its end sends, in per-event mode)
        self.quiet_turns = 0  # held turns in a row with one connection written to
        self.until_sample = SAMPLE_EVERY

    def hold_client(self, client: ClientConnection) -> None:
        """`client` has writes gathered in its `wbuf`: send them when this turn or event ends."""
        self._hold()
        self.clients.append(client)

    def hold_upstream(self, conn: UpstreamConnection) -> None:
        """`conn` has writes gathered in its `out`: send them when this turn or event ends."""
        self._hold()
        self.upstreams.append(conn)

    def begin(self) -> bool:
        """A handler starts; what it writes may leave when it ends. Returns the state for `end`."""
        was = self.in_event
        self.in_event = True
        return was

    def end(self, was: bool) -> None:
        if not was and not self.held:
            self._send()
        self.in_event = was

    def _hold(self) -> None:
        if self.held:
            return
        if self.per_event and self.in_event:
            self.until_sample -= 1
            if self.until_sample > 0:
                return
            self.until_sample = SAMPLE_EVERY  # and hold the rest of this turn, to count it
        self.held = True
        self.loop.call_soon(self._turn_ended)

    def _turn_ended(self) -> None:
        self.held = False
        if len(self.clients) + len(self.upstreams) > 1:
            self.quiet_turns = 0
            self.per_event = False
        else:
            self.quiet_turns += 1
            if self.quiet_turns >= QUIET_TURNS:
                self.per_event = True
        self._send()

    def _send(self) -> None:
        """Upstreams first: a pod starts on its request while the clients get theirs. Until
        none is left: a send can make another write (a flow-control callback)."""
        while self.upstreams or self.clients:
            if self.upstreams:
                upstreams = self.upstreams
                self.upstreams = []
                for conn in upstreams:
                    conn.send_held()
            if self.clients:
                clients = self.clients
                self.clients = []
                for client in clients:
                    client.send_held()
