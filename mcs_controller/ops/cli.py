"""What the three components' entry points share: argument types, the event loop, and the
signals that stop a server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


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


class Shutdown:
    """A server's stop signals (made on the running loop, before the server starts): SIGINT
    stops at once; the first SIGTERM asks for a graceful stop, a second one cuts it short."""

    def __init__(self) -> None:
        self.terminate, self.stop = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGTERM, self._sigterm)

    def _sigterm(self) -> None:
        (self.stop if self.terminate.is_set() else self.terminate).set()

    async def wait(self, drain: Callable[[], None], delay: float, what: str) -> None:
        """Until a signal; after a first SIGTERM, `drain()` and `delay` seconds more of
        serving (logged with `what`), unless a second signal comes first."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self.terminate, self.stop)]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not self.stop.is_set() and delay > 0:
            log.info("SIGTERM: %s for %.3g s, then stopping", what, delay)
            drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
