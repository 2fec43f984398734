"""`python -m gateway --config fleet.yaml`: the multi-cluster gateway against real clusters.

Ingress objects are read from the hub; endpoints from every member cluster (the same
config file as the controller's: kubeconfig, hub, clusters).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from gateway.app import GatewayApp
from mcs_controller.access.kube import KubeConfigError
from mcs_controller.config import ConfigError, load_config
from mcs_controller.connect import connect_all
from mcs_controller.ops.cli import host_port, run
from mcs_controller.ops.logs import setup_logging

log = logging.getLogger("gateway")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="fleet config file (manifests/README.md)")
    p.add_argument("--listen", type=host_port, default=("0.0.0.0", 8080), help="HTTP listener")
    p.add_argument("--admin", type=host_port, default=("0.0.0.0", 8082),
                   help="/metrics /healthz /readyz /routes")
    p.add_argument("--class", dest="class_name", default="amcs", help="our IngressClass name (default: %(default)s)")
    p.add_argument("--controller", default="amcs.dev/gateway", help="our IngressClass spec.controller (default: %(default)s)")
    p.add_argument("--watch-ingress-without-class", action="store_true",
                   help="also serve Ingresses with no class (ingress-nginx's flag)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        members, hub = connect_all(cfg)
    except (ConfigError, KubeConfigError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if hub is None:
        print(f"gateway: {args.config}: hub: required (Ingresses are read from the hub)", file=sys.stderr)
        return 2
    app = GatewayApp(hub, members, listen=args.listen, admin=args.admin,
                     class_name=args.class_name, controller=args.controller,
                     accept_classless=args.watch_ingress_without_class)
    try:
        await app.start()
    except OSError as exc:
        print(f"gateway: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc.strerror}",
              file=sys.stderr)
        return 2
    print(f"gateway listening on http {args.listen[0]}:{app.proxy.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    with contextlib.suppress(Exception):
        await app.stop()
    for client in [*members.values(), hub]:
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    return run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
