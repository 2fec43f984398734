"""`amcs up [FLEET]` (or `python -m mcs_fleet up`): the whole fleet in one process.

Loads an embedded fleet (one sub-folder per cluster), simulates its pods, runs the MCS
controller against it, and prints what every cluster then holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path

from mcs_controller.access.errors import ApiError
from mcs_controller.access.loader import Fleet, load_fleet
from mcs_controller.access.resources import NAMESPACES
from mcs_controller.app import ControllerApp
from mcs_controller.ops.logs import setup_logging
from mcs_fleet.report import fleet_report
from mcs_fleet.sim import FleetSimulator

log = logging.getLogger("mcs_fleet")
DEFAULT_FLEET = Path(__file__).resolve().parent.parent / "manifests" / "examples" / "service-discovery"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="amcs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the all-in-one fleet on the embedded store")
    up.add_argument("fleet", nargs="?", default=str(DEFAULT_FLEET),
                    help="fleet folder (default: manifests/examples/service-discovery)")
    up.add_argument("--admin-port", type=int, default=9090, help="controller /metrics /healthz /readyz")
    up.add_argument("--exit-after", type=float, default=None, metavar="SECONDS",
                    help="stop after this long (default: run until Ctrl-C)")
    up.add_argument("--log-level", default="warning")
    up.add_argument("--log-format", choices=("json", "text"), default="text")
    return p.parse_args(argv)


async def settled(app: ControllerApp, quiet: float = 0.5, limit: float = 30.0) -> None:
    """Until the controller has synced, drained its queue and written nothing for `quiet`."""
    controller = app.controller
    deadline = time.monotonic() + limit
    last, since = controller.writer.total, time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        busy = not controller.synced or len(controller.queue) or controller.queue.in_progress
        if busy or controller.writer.total != last:
            last, since = controller.writer.total, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


async def _has_namespace(fleet: Fleet, cluster: str | None, ns: str) -> bool:
    if cluster is None:
        return False
    try:
        await fleet.clusters[cluster].get(NAMESPACES, None, ns)
    except ApiError:
        return False
    return True


async def up(args: argparse.Namespace) -> int:
    fleet, errors = await load_fleet(args.fleet)
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    if not fleet.members:
        print(f"amcs: no member clusters in {args.fleet}", file=sys.stderr)
        return 2
    hub = fleet.clusters[fleet.hub] if fleet.hub else None
    lease = ("amcs-system", "mcs-controller") if await _has_namespace(fleet, fleet.hub, "amcs-system") else None
    sim = FleetSimulator(fleet)
    await sim.start()
    app = ControllerApp(fleet.member_clients(), hub, admin_host="127.0.0.1",
                        admin_port=args.admin_port, lease=lease)
    task = asyncio.create_task(app.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await settled(app)
        print(f"fleet {fleet.name}: members {', '.join(fleet.members)}"
              + (f"; hub {fleet.hub}" if fleet.hub else ""))
        print(await fleet_report(fleet))
        print(f"\ncontroller admin: http://127.0.0.1:{app.admin.bound_port}/metrics  (/healthz, /readyz)")
        if args.exit_after is None:
            print("running; Ctrl-C to stop")
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), args.exit_after)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    return run(up(args))


def run(coro) -> int:
    """uvloop when installed (the `fast` extra), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
