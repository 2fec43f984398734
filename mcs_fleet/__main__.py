"""`amcs up [FLEET]` (or `python -m mcs_fleet up`): the whole fleet in one process.

Loads an embedded fleet (one sub-folder per cluster), simulates its pods, runs the MCS
controller and a clusterset DNS per cluster against it, and prints what every cluster
then holds and how to query it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from mcs_controller.access.loader import load_fleet
from mcs_controller.ops.cli import run
from mcs_controller.ops.logs import setup_logging
from mcs_fleet.allinone import AllInOne, Ports
from mcs_fleet.report import access_report, fleet_report

DEFAULT_FLEET = Path(__file__).resolve().parent.parent / "manifests" / "examples" / "service-discovery"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="amcs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the all-in-one fleet on the embedded store")
    up.add_argument("fleet", nargs="?", default=str(DEFAULT_FLEET),
                    help="fleet folder (default: manifests/examples/service-discovery)")
    up.add_argument("--admin-port", type=int, default=9090, help="controller /metrics /healthz /readyz")
    up.add_argument("--dns-port", type=int, default=None,
                    help="DNS port on each cluster's 127.53.0.<n> address (default 53 as root, else 5353)")
    up.add_argument("--gateway-port", type=int, default=8080, help="gateway HTTP listener on 127.0.0.1")
    up.add_argument("--gateway-tls-port", type=int, default=8443,
                    help="gateway HTTPS listener on 127.0.0.1 (-1: none)")
    up.add_argument("--exit-after", type=float, default=None, metavar="SECONDS",
                    help="stop after this long (default: run until Ctrl-C)")
    up.add_argument("--log-level", default="warning")
    up.add_argument("--log-format", choices=("json", "text"), default="text")
    return p.parse_args(argv)


async def up(args: argparse.Namespace) -> int:
    fleet, errors = await load_fleet(args.fleet)
    for error in errors:
        print(f"warning: {error}", file=sys.stderr)
    if not fleet.members:
        print(f"amcs: no member clusters in {args.fleet}", file=sys.stderr)
        return 2
    ports = Ports(controller_admin=args.admin_port, gateway=args.gateway_port,
                  gateway_admin=0 if args.gateway_port == 0 else 8082,
                  gateway_tls=None if args.gateway_tls_port < 0 else args.gateway_tls_port)
    if args.dns_port is not None:
        ports.dns = args.dns_port
    fleet_app = AllInOne(fleet, ports)
    try:
        await fleet_app.start()
    except OSError as exc:
        print(f"amcs: cannot listen: {exc}", file=sys.stderr)
        await fleet_app.stop()
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await fleet_app.settled()
        print(f"fleet {fleet.name}: members {', '.join(fleet.members)}"
              + (f"; hub {fleet.hub}" if fleet.hub else ""))
        print(await fleet_report(fleet))
        print()
        print(await access_report(fleet_app))
        print("running; Ctrl-C to stop" if args.exit_after is None
              else f"running for {args.exit_after:g} s", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.exit_after)
    finally:
        await fleet_app.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    return run(up(args))



if __name__ == "__main__":
    sys.exit(main())
