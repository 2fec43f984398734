"""Command-line argument types shared by the three components' entry points."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any


def host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or `:PORT` (all addresses) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be a number") from None
    if not 0 <= number < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: port out of range")
    return host, number


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run an entry point's main coroutine: on uvloop when installed (the `fast` extra)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
