"""`python -m mcs_controller --config fleet.yaml`: the controller against real clusters."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from mcs_controller.access.kube import KubeCluster
from mcs_controller.access.kube.config import KubeConfigError, load_incluster, load_kubeconfig
from mcs_controller.app import ControllerApp
from mcs_controller.config import ClusterRef, ConfigError, ControllerConfig, load_config
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


def connect(cfg: ControllerConfig, ref: ClusterRef) -> KubeCluster:
    if ref.context is None and cfg.kubeconfig is None:
        return KubeCluster(ref.name, load_incluster())
    return KubeCluster(ref.name, load_kubeconfig(cfg.kubeconfig, ref.context))


async def amain(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        members = {ref.name: connect(cfg, ref) for ref in cfg.clusters}
        hub = connect(cfg, cfg.hub) if cfg.hub is not None else None
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
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
