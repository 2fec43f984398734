"""`python -m mcs_controller --config fleet.yaml`: the controller against real clusters."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from mcs_controller.access.kube import KubeConfigError
from mcs_controller.app import ControllerApp
from mcs_controller.config import ConfigError, load_config
from mcs_controller.connect import connect_all
from mcs_controller.ops.cli import run
from mcs_controller.ops.logs import setup_logging

log = logging.getLogger("mcs_controller")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mcs_controller", description=__doc__)
    p.add_argument("--config", required=True, help="controller config file (manifests/README.md)")
    p.add_argument("--admin-address", default="0.0.0.0", help="admin listener address")
    p.add_argument("--admin-port", type=int, default=8080, help="/metrics, /healthz, /readyz")
    p.add_argument("--identity", default=None, help="leader election identity (default: hostname_pid)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        members, hub = connect_all(cfg)
    except (ConfigError, KubeConfigError) as exc:
        print(f"mcs_controller: {exc}", file=sys.stderr)
        return 2
    app = ControllerApp(
        members, hub, admin_host=args.admin_address, admin_port=args.admin_port,
        lease=(cfg.lease_namespace, cfg.lease_name), identity=args.identity,
        grace_period=cfg.unreachable_grace_period,
    )
    task = asyncio.create_task(app.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for client in [*members.values(), *([hub] if hub else [])]:
        await client.close()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    return run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
