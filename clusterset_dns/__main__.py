"""`python -m clusterset_dns`: the authoritative clusterset.local server for one cluster.

Source of ServiceImports and imported EndpointSlices: a real API server
(`--kubeconfig/--context`, in-cluster when neither is given) or one cluster folder of an
embedded fleet (`--fleet DIR --cluster NAME`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from clusterset_dns.app import DnsApp
from mcs_controller.access.api import ClusterClient
from mcs_controller.ops.cli import Shutdown, host_port, run
from mcs_controller.ops.logs import setup_logging

log = logging.getLogger("clusterset_dns")


def admin_address(text: str) -> tuple[str, int] | None:
    return None if text.lower() in ("", "off", "none") else host_port(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clusterset_dns", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=host_port, default=("0.0.0.0", 53), metavar="HOST:PORT",
                   help="UDP and TCP address (default 0.0.0.0:53; port 0 picks a free one)")
    p.add_argument("--zone", default="clusterset.local", help="zone served (default clusterset.local)")
    p.add_argument("--ttl", type=int, default=5, help="TTL of answers, seconds (default 5)")
    p.add_argument("--strict", action="store_true",
                   help="no ACK One <hostname>.<svc>.<ns>.svc names (strict DNS spec)")
    p.add_argument("--admin", type=admin_address, default=("0.0.0.0", 8081), metavar="HOST:PORT",
                   help="/metrics /healthz /readyz (default 0.0.0.0:8081; 'off' disables)")
    p.add_argument("--shutdown-delay", type=float, default=5.0, metavar="SECONDS",
                   help="after SIGTERM, keep answering this long with /readyz failing, so the "
                   "Service's endpoints drop this pod before it stops (CoreDNS's lameduck; "
                   "default: %(default)s; a second SIGTERM or SIGINT stops at once)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--fleet", default=None, metavar="DIR", help="embedded fleet folder")
    p.add_argument("--cluster", default=None, help="with --fleet: the cluster folder to serve")
    args = p.parse_args(argv)
    if args.fleet and not args.cluster:
        p.error("--fleet needs --cluster NAME")
    if args.fleet and (args.kubeconfig or args.context):
        p.error("--fleet and --kubeconfig/--context are exclusive")
    if not 0 <= args.ttl <= 2**31 - 1:
        p.error("--ttl out of range")
    if not 0 <= args.shutdown_delay <= 3600:
        p.error("--shutdown-delay: between 0 and 3600 seconds")
    return args


async def open_client(args: argparse.Namespace) -> ClusterClient:
    """The cluster to serve; ValueError with a message for the user when it cannot be had."""
    if args.fleet:
        from mcs_controller.access.embedded import EmbeddedCluster
        from mcs_controller.access.loader import LoadError, load_cluster

        folder = Path(args.fleet) / args.cluster
        if not folder.is_dir():
            raise ValueError(f"no cluster folder {folder}")
        cluster = EmbeddedCluster(args.cluster)
        errors: list[LoadError] = []
        await load_cluster(cluster, folder, errors)
        for error in errors:
            print(f"warning: {error}", file=sys.stderr)
        return cluster
    from mcs_controller.access.kube import KubeCluster
    from mcs_controller.access.kube.config import KubeConfigError, load_incluster, load_kubeconfig

    try:
        if args.kubeconfig is None and args.context is None:
            return KubeCluster("in-cluster", load_incluster())
        conn = load_kubeconfig(args.kubeconfig, args.context)
    except KubeConfigError as exc:
        raise ValueError(str(exc)) from exc
    return KubeCluster(args.context or "default", conn)


def _shown(host: str) -> str:
    """A host as it goes before ":port" (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


async def amain(args: argparse.Namespace) -> int:
    try:
        client = await open_client(args)
    except ValueError as exc:
        print(f"clusterset_dns: {exc}", file=sys.stderr)
        return 2
    app = DnsApp(client, listen=args.listen, zone=args.zone, ttl=args.ttl,
                 ack_names=not args.strict, admin=args.admin)
    shutdown = Shutdown()
    try:
        await app.start()
    except OSError as exc:
        print(f"clusterset_dns: cannot listen: {exc}", file=sys.stderr)
        return 1
    host, port = app.address
    print(f"clusterset_dns listening on udp+tcp {_shown(host)}:{port}", flush=True)
    if app.admin_port is not None:  # (a port given as 0 is shown as bound)
        print(f"clusterset_dns admin on http://{_shown(args.admin[0])}:{app.admin_port}", flush=True)
    try:
        await shutdown.wait(app.drain, args.shutdown_delay, "answering with /readyz failing")
    finally:
        log.info("shutting down")
        await app.stop()
        close = getattr(client, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        setup_logging(args.log_level, args.log_format)
    except ValueError as exc:
        print(f"clusterset_dns: {exc}", file=sys.stderr)
        return 2
    return run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
