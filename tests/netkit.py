"""Ports for servers a test starts and must name in advance (a child's command line, a
config file). Picked below the kernel's ephemeral range: a port picked by binding 0 comes
from that range, where any outgoing connection made meanwhile, by this run or another
process, may take it before the server binds it."""

from __future__ import annotations

import random
import socket
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
    for _ in range(200):
        port = random.randrange(10000, max(low, 10001))
        kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
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
