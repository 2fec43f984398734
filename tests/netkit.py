"""Loopback ports for tests and bench/: free ones for servers that must be named in advance
(a child's command line, a config file), picked below the kernel's ephemeral range (a port picked by
binding 0 comes from that range, where any outgoing connection made meanwhile may take it
before the server binds it); one that refuses connects; one where connects hang."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Iterator
from pathlib import Path


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(udp: bool = False) -> int:
    """A port on 127.0.0.1 free for TCP (and UDP too, with `udp`) right now, outside the
    ephemeral range."""
    low = _ephemeral_low()
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for _ in range(200):
        port = random.randrange(10000, max(low, 10001))
        socks = []
        try:
            for kind in kinds:
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port below the ephemeral range")


_HELD: list[socket.socket] = []


def refusing_port(host: str = "127.0.0.1") -> int:
    """A port where connects are refused: a socket bound there and never listening, held
    until the process ends, so no other socket can take the port meanwhile."""
    s = socket.socket()
    s.bind((host, 0))
    _HELD.append(s)
    return s.getsockname()[1]


@contextlib.contextmanager
def silent_listener(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """A pod that never answers a connect, on loopback (a SYN to an address that is not on
    this host would go nowhere, but only loopback is allowed here): a listening socket whose
    accept queue is full, so the kernel drops further SYNs and a connect hangs until the
    caller's timeout. Yields the port."""
    lsock = socket.socket()
    lsock.bind((host, port))
    lsock.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(lsock.getsockname())
            fillers.append(c)
        yield lsock.getsockname()[1]
    finally:
        for c in fillers:
            c.close()
        lsock.close()
