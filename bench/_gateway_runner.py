"""Our gateway alone, for bench/gateway.py: an embedded fleet folder -> GatewayApp on uvloop.

No controller, no DNS, no simulated pods: only the data path and what it needs (Ingress and
endpoint informers over the embedded clusters, the route table, metrics, the admin port), so
the process under wrk spends its time where a deployed gateway would. Prints one line
`READY <port> <admin port>` once the route table is built, then serves until SIGTERM/SIGINT.
With `--profile FILE`, serving (from READY to the stop signal) runs under cProfile and the
stats are written to FILE on the stop signal (pstats format).

    python bench/_gateway_runner.py --fleet DIR --listen 127.0.0.1:0 --admin 127.0.0.1:0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# `python bench/_gateway_runner.py` puts bench/ first on sys.path, where bench/gateway.py
# would shadow the gateway package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.app import GatewayApp  # noqa: E402
from gateway.proxy import Limits  # noqa: E402
from mcs_controller.access.loader import load_fleet  # noqa: E402


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve(args: argparse.Namespace) -> int:
    fleet, errors = await load_fleet(args.fleet)
    if errors or fleet.hub is None:
        for error in errors:
            print(f"runner: {error}", file=sys.stderr)
        print("runner: the fleet folder did not load cleanly (or has no hub)", file=sys.stderr)
        return 2
    app = GatewayApp(fleet.clusters[fleet.hub], fleet.member_clients(),
                     listen=args.listen, admin=args.admin,
                     limits=Limits(busy_poll=args.busy_poll_us / 1e6))
    await app.start()
    try:
        await app.wait_ready(within=15.0)
        if app.problems:
            print(f"runner: config problems: {[str(p) for p in app.problems]}", file=sys.stderr)
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        profiler = None
        if args.profile is not None:  # serving only: not the start, the stop or idle waits
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        print(f"READY {app.proxy.port} {app.admin_port}", flush=True)
        await stop.wait()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(args.profile))
    finally:
        with contextlib.suppress(Exception):
            await app.stop(grace=0.5)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fleet", required=True, type=Path, help="embedded fleet folder (with a hub)")
    p.add_argument("--listen", type=host_port, default=("127.0.0.1", 0))
    p.add_argument("--admin", type=host_port, default=("127.0.0.1", 0))
    p.add_argument("--profile", type=Path, help="write cProfile stats here on exit")
    p.add_argument("--busy-poll-us", type=float, default=0.0,
                   help="the gateway's busy polling window (Limits.busy_poll), µs; 0 = off")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
