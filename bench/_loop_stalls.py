"""How late the event loop runs while something happens: a 1 ms ticker on the loop."""

from __future__ import annotations

import argparse
import asyncio


def sizes(text: str) -> list[int]:
    """argparse type of the fleet-size lists the control-side benches take ("500,2000")."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated whole numbers, not {text!r}") from None


class LoopStalls:
    """`async with LoopStalls() as stalls:` ... then `stalls.max_ms`, `stalls.p99_ms`: how late
    the ticker woke (what a request arriving then would wait), over the block."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self._ticking = False
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while self._ticking:
            t = loop.time()
            await asyncio.sleep(0.001)
            self.lateness.append(loop.time() - t - 0.001)

    async def __aenter__(self) -> LoopStalls:
        self._ticking = True
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0.1)  # (a settled ticker: the first ticks are not the block's)
        self.lateness.clear()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._ticking = False
        if self._task is not None:
            await self._task
        self.lateness.sort()

    @property
    def ticks(self) -> int:
        return len(self.lateness)

    @property
    def max_ms(self) -> float:
        return round(self.lateness[-1] * 1000, 2) if self.lateness else 0.0

    @property
    def p99_ms(self) -> float:
        n = len(self.lateness)
        return round(self.lateness[int(n * 0.99)] * 1000, 2) if n else 0.0
