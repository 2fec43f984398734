"""`python -m gateway --config fleet.yaml`: the multi-cluster gateway against real clusters.

Ingress objects are read from the hub; endpoints from every member cluster (the same
config file as the controller's: kubeconfig, hub, clusters). With --listen-tls, an HTTPS
listener serves the certificates of the Ingresses' spec.tls (Secrets in the hub) by SNI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys

from gateway.app import GatewayApp
from gateway.proxy import Limits
from gateway.routing.extauth import DEFAULT_NO_AUTH_LOCATIONS, GLOBAL_AUTH_KEYS, global_auth_scope
from gateway.routing.values import is_dns_label
from gateway.tls import TLSConfigError, check_key_pair
from mcs_controller.access.kube import KubeConfigError
from mcs_controller.config import ConfigError, load_config
from mcs_controller.connect import connect_all
from mcs_controller.ops.cli import Shutdown, host_port, run
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
    p.add_argument("--listen-tls", type=host_port, default=None, metavar="HOST:PORT",
                   help="HTTPS listener (certificates from the Ingresses' spec.tls; default: none)")
    p.add_argument("--default-tls-cert", metavar="FILE",
                   help="PEM certificate (chain) for hosts without one (default: self-signed)")
    p.add_argument("--default-tls-key", metavar="FILE", help="its PEM private key")
    p.add_argument("--https-redirect-port", type=int, default=None, metavar="PORT",
                   help="port named in ssl-redirect Locations (default: the --listen-tls port; "
                        "443 is left out)")
    p.add_argument("--enable-ssl-passthrough", action="store_true",
                   help="honour the ssl-passthrough annotation on the --listen-tls listener: "
                   "TLS to such hosts is spliced to the backend unterminated (ingress-nginx's flag)")
    p.add_argument("--ssl-passthrough-idle-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="close a passthrough connection with no byte either way for this long "
                   "(nginx stream proxy_timeout; default: %(default)s)")
    p.add_argument("--proxy-protocol", action="store_true",
                   help="every connection to either listener starts with a PROXY protocol (v1 "
                   "or v2) header naming the client, from a load balancer in front "
                   "(ingress-nginx's use-proxy-protocol)")
    p.add_argument("--trusted-proxy", dest="trusted_proxies", action="append", default=[],
                   metavar="CIDR", help="a proxy/LB whose X-Forwarded-* headers are kept "
                   "(repeatable)")
    p.add_argument("--hsts-max-age", type=int, default=31536000, metavar="SECONDS",
                   help="Strict-Transport-Security max-age on HTTPS responses for hosts with a "
                   "certificate (ingress-nginx's hsts; 0: no header; default: %(default)s)")
    p.add_argument("--hsts-include-subdomains", choices=("true", "false"), default="true",
                   help="add includeSubDomains (default: %(default)s)")
    p.add_argument("--hsts-preload", action="store_true", help="add preload")
    p.add_argument("--busy-poll-us", type=float, default=0.0, metavar="US",
                   help="keep polling this many microseconds after each read instead of "
                   "sleeping (lower tail latency on VMs, more CPU; default: off)")
    p.add_argument("--default-backend-service", metavar="NAMESPACE/NAME", default=None,
                   help="Service (its first port) that answers requests no Ingress rule matches, "
                        "and the custom-http-errors pages of Ingresses without default-backend")
    p.add_argument("--limit-req-status-code", type=int, default=503, metavar="STATUS",
                   help="status refused by limit-rps/limit-rpm (ingress-nginx's "
                   "limit-req-status-code; default: %(default)s)")
    p.add_argument("--limit-conn-status-code", type=int, default=503, metavar="STATUS",
                   help="status refused by limit-connections (ingress-nginx's "
                   "limit-conn-status-code; default: %(default)s)")
    auth = p.add_argument_group(
        "gateway-wide external authentication",
        "ingress-nginx's ConfigMap keys of the same names: the auth-* annotation values, checked "
        "on the routes of every Ingress without auth-url of its own unless it sets "
        "enable-global-auth: \"false\" (gateway/README.md)")
    for key in GLOBAL_AUTH_KEYS:
        auth.add_argument(f"--{key}", metavar="VALUE", help=f"as the {key[7:]} annotation")
    auth.add_argument("--no-auth-locations", default=DEFAULT_NO_AUTH_LOCATIONS, metavar="PREFIXES",
                      help="comma-separated path prefixes whose routes skip every auth check "
                      "(default: %(default)s)")
    p.add_argument("--access-log", metavar="FILE", default=None,
                   help="one JSON line per request (nginx's variable names) to FILE, or - for "
                   "standard output (default: none)")
    p.add_argument("--shutdown-delay", type=float, default=5.0, metavar="SECONDS",
                   help="on SIGTERM, keep serving this long with /readyz failing and every "
                   "response closing its connection: load balancers and kube-proxy learn of a "
                   "terminating pod late, and meanwhile still send it clients (default: "
                   "%(default)s; SIGINT or a second SIGTERM cuts it short)")
    p.add_argument("--shutdown-grace", type=float, default=5.0, metavar="SECONDS",
                   help="then, with the listeners closed, what requests in flight get to finish "
                   "(default: %(default)s)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    args = p.parse_args(argv)
    if (args.default_tls_cert is None) != (args.default_tls_key is None):
        p.error("--default-tls-cert and --default-tls-key go together")
    if args.default_tls_cert is not None and args.listen_tls is None:
        p.error("--default-tls-cert needs --listen-tls")
    if args.enable_ssl_passthrough and args.listen_tls is None:
        p.error("--enable-ssl-passthrough needs --listen-tls")
    if not args.ssl_passthrough_idle_timeout > 0:
        p.error("--ssl-passthrough-idle-timeout: must be > 0 seconds")
    if args.https_redirect_port is not None and not 0 < args.https_redirect_port < 65536:
        p.error("--https-redirect-port: out of range")
    if args.hsts_max_age < 0:
        p.error("--hsts-max-age: must be >= 0")
    for flag in ("limit_req_status_code", "limit_conn_status_code"):
        if not 400 <= getattr(args, flag) <= 599:
            p.error(f"--{flag.replace('_', '-')}: an error status (400-599)")
    if args.access_log not in (None, "-"):
        try:
            open(args.access_log, "a").close()  # noqa: SIM115 (the gateway opens it later)
        except OSError as exc:
            p.error(f"--access-log {args.access_log}: {exc.strerror}")
    for flag in ("shutdown_delay", "shutdown_grace"):
        if not 0 <= getattr(args, flag) <= 3600:
            p.error(f"--{flag.replace('_', '-')}: between 0 and 3600 seconds")
    if not 0 <= args.busy_poll_us <= 1_000_000:
        p.error("--busy-poll-us: between 0 and 1000000")
    if args.default_backend_service is not None:
        ns, slash, name = args.default_backend_service.partition("/")
        if not (slash and is_dns_label(ns) and is_dns_label(name)):
            p.error(f"--default-backend-service {args.default_backend_service!r}: "
                    "expected NAMESPACE/NAME")
    try:
        args.auth_scope = global_auth_scope(
            {key: getattr(args, key.replace("-", "_")) for key in GLOBAL_AUTH_KEYS},
            args.no_auth_locations)
    except ValueError as exc:
        p.error(f"--{exc}")
    for cidr in args.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            p.error(f"--trusted-proxy {cidr!r}: not an address or CIDR")
    return args


def hsts_value(args: argparse.Namespace) -> str:
    """The Strict-Transport-Security value the flags ask for ("": none)."""
    if not args.hsts_max_age:
        return ""
    return (f"max-age={args.hsts_max_age}"
            + ("; includeSubDomains" if args.hsts_include_subdomains == "true" else "")
            + ("; preload" if args.hsts_preload else ""))


async def amain(args: argparse.Namespace) -> int:
    if args.default_tls_cert is not None:
        try:  # before anything connects: a bad file is a plain startup error
            check_key_pair(args.default_tls_cert, args.default_tls_key)
        except TLSConfigError as exc:
            print(f"gateway: default TLS certificate: {exc}", file=sys.stderr)
            return 2
    try:
        cfg = load_config(args.config)
        members, hub = connect_all(cfg)
    except (ConfigError, KubeConfigError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if hub is None:
        print(f"gateway: {args.config}: hub: required (Ingresses are read from the hub)", file=sys.stderr)
        return 2
    try:
        app = GatewayApp(hub, members, listen=args.listen, admin=args.admin,
                         class_name=args.class_name, controller=args.controller,
                         accept_classless=args.watch_ingress_without_class,
                         listen_tls=args.listen_tls, default_cert=args.default_tls_cert,
                         default_key=args.default_tls_key,
                         https_redirect_port=args.https_redirect_port,
                         xff_trusted=args.trusted_proxies,
                         limits=Limits(busy_poll=args.busy_poll_us / 1e6,
                                       passthrough_idle_timeout=args.ssl_passthrough_idle_timeout),
                         hsts=hsts_value(args),
                         default_backend=args.default_backend_service,
                         rate_limit_status=(args.limit_req_status_code,
                                            args.limit_conn_status_code),
                         auth_scope=args.auth_scope, ssl_passthrough=args.enable_ssl_passthrough,
                         access_log=args.access_log, proxy_protocol=args.proxy_protocol)
    except TLSConfigError as exc:
        print(f"gateway: default TLS certificate: {exc}", file=sys.stderr)
        return 2
    try:
        await app.start()
    except OSError as exc:
        where = (args.listen if not app.proxy.port else
                 args.listen_tls if app.proxy_tls is not None and not app.proxy_tls.port else
                 args.admin)
        print(f"gateway: cannot listen on {where[0]}:{where[1]}: {exc.strerror}",
              file=sys.stderr)
        return 2
    print(f"gateway listening on http {args.listen[0]}:{app.proxy.port}", flush=True)
    if app.address_tls is not None:
        print(f"gateway listening on https {app.address_tls[0]}:{app.address_tls[1]}",
              flush=True)
    shutdown = Shutdown()
    if app.access_log is not None:  # after a rotation (nginx's USR1)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, app.access_log.reopen)
    await shutdown.wait(app.drain, args.shutdown_delay,
                        "draining (/readyz fails, connections close after their response)")
    with contextlib.suppress(Exception):
        await app.stop(args.shutdown_grace)
    for client in [*members.values(), hub]:
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    return run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
