"""ingress-nginx's redirects from plain HTTP to HTTPS (its lua `redirect_to_https`):

* `ssl-redirect` (default "true"): a request on the plain-HTTP listener for a host that has
  a certificate configured (a host of one of our Ingresses' `spec.tls`, see gateway/tls.py;
  a bad Secret still counts, the host is then served the default certificate, as in
  ingress-nginx) is answered `308` with `Location: https://<host><request-uri>`;
* `force-ssl-redirect: "true"`: the same with or without a certificate (TLS terminated in
  front of the gateway), and even when `ssl-redirect` is "false";
* `preserve-trailing-slash` (default "false"): ingress-nginx drops one trailing "/" of the
  request URI in these redirects unless this is "true".

The host is the request's Host without its port (ingress-nginx `redirect_host()`); the port
of the HTTPS listener is added when it is not 443. A request that a trusted proxy marks with
`X-Forwarded-Proto` other than "http" is not redirected (ingress-nginx with
`use-forwarded-headers`: `pass_access_scheme`), and that proxy's `X-Forwarded-Host` names the
host. Order, as in ingress-nginx: `app-root` (server level) and `permanent-/temporal-redirect`
(an nginx `return`) answer first; then this redirect (lua, rewrite phase), before any canary,
balancing or rewrite. The catch-all `defaultBackend` is never redirected (ingress-nginx
restores its rewrite settings), nor a rule whose path starts with
`/.well-known/acme-challenge` (ingress-nginx's `no-tls-redirect-locations` default), even
with `force-ssl-redirect`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.types import Redirect, RequestView, RouteDecision

from .matching import normalize_request_host
from .rewrite import derive
from .values import Annotations

if TYPE_CHECKING:
    from .matching import HostTable
    from .table import Route

#: ingress-nginx's `http-redirect-code` default.
HTTP_REDIRECT_CODE = 308
#: ingress-nginx's `no-tls-redirect-locations` default: rules whose path starts so are never
#: redirected, so an ACME HTTP-01 challenge (cert-manager's solver Ingress) is answered on
#: plain HTTP even for a host that already has a certificate.
NO_TLS_REDIRECT_LOCATIONS = ("/.well-known/acme-challenge",)
SSL_KEYS = ("ssl-redirect", "force-ssl-redirect", "preserve-trailing-slash")


@dataclass(frozen=True)
class SslRedirect:
    """The redirect annotations of one main Ingress (ingress-nginx's defaults)."""

    enabled: bool = True  # ssl-redirect
    force: bool = False  # force-ssl-redirect
    preserve_trailing_slash: bool = False


def parse_ssl_redirect(ann: Annotations) -> SslRedirect:
    enabled = ann.boolean("ssl-redirect")
    return SslRedirect(enabled=True if enabled is None else enabled,
                       force=bool(ann.boolean("force-ssl-redirect")),
                       preserve_trailing_slash=bool(ann.boolean("preserve-trailing-slash")))


def host_has_certificate(vhost: str, tls_hosts: Collection[str]) -> bool:
    """ingress-nginx `certificate.configured_for_current_request()`: the request's host, else
    its one-label wildcard, has a certificate. Decided per virtual host of the table: a
    request reaches an exact host entry only with that host, and a wildcard entry only when
    no exact entry exists (every host with a certificate has an entry), so this is exact."""
    if not vhost:
        return False
    if vhost in tls_hosts:
        return True
    dot = vhost.find(".")
    return not vhost.startswith("*.") and dot > 0 and "*" + vhost[dot:] in tls_hosts


class HttpsRedirect:
    """Builds the redirect per request, like app-root's (a `derive` of the route's decision)."""

    __slots__ = ("port_suffix", "preserve_trailing_slash")

    def __init__(self, port: int | None, preserve_trailing_slash: bool) -> None:
        self.port_suffix = f":{port}" if port and port != 443 else ""
        self.preserve_trailing_slash = preserve_trailing_slash

    def apply(self, decision: RouteDecision, request: RequestView) -> RouteDecision | None:
        """The redirect, or None when the request already came over HTTPS (trusted proxy)."""
        host = request.host
        if request.via_proxy:
            headers = request.headers
            proto = headers.get("x-forwarded-proto")
            if proto and proto.split(",", 1)[0].strip().lower() != "http":
                return None
            forwarded = headers.get("x-forwarded-host")
            if forwarded:
                host = normalize_request_host(forwarded.split(",", 1)[0].strip())
        if not host:  # HTTP/1.0 without Host: no URL to send it to
            return None
        uri = request.path
        if not self.preserve_trailing_slash and uri.endswith("/"):
            uri = uri[:-1]
        location = f"https://{host}{self.port_suffix}{uri}"
        return derive(decision, redirect=Redirect(HTTP_REDIRECT_CODE, location))

    def describe(self) -> dict:
        return {"status": HTTP_REDIRECT_CODE,
                "location": f"https://$host{self.port_suffix}$request_uri",
                "preserveTrailingSlash": self.preserve_trailing_slash}


def install_https_redirects(hosts: HostTable[Route], tls_hosts: Collection[str],
                            port: int | None) -> None:
    """Give every route that redirects to HTTPS its redirector (plain-HTTP table only)."""
    made: dict[bool, HttpsRedirect] = {}
    for vhost in hosts.hosts():
        certified = host_has_certificate(vhost.name, tls_hosts)
        for route in vhost.paths.values() + ([vhost.default] if vhost.default else []):
            ssl = route.ssl
            if (ssl is None or route.app_root is not None
                    or route.primary[0][1].decision.redirect is not None):
                continue  # catch-all, app-root, or an explicit redirect answers first
            if route.path.startswith(NO_TLS_REDIRECT_LOCATIONS):
                continue  # ACME challenges stay on plain HTTP
            if ssl.force or (ssl.enabled and certified):
                keep = ssl.preserve_trailing_slash
                if keep not in made:
                    made[keep] = HttpsRedirect(port, keep)
                route.https = made[keep]
