"""ingress-nginx `from-to-www-redirect: "true"`: the other spelling of a host redirects to it.

For each rule host H of an Ingress with the annotation, requests for `www.H` (or, when H
starts with `www.`, for H without it) are answered `308` with
`Location: <scheme>://H[:port]<request-uri>`, before any path matching. As in ingress-nginx
(its `buildRedirects` and the redirect server of nginx.tmpl):

* nothing is made when an Ingress has a rule for the other spelling itself (that host is
  served as its rules say; reported), nor for a wildcard or empty host;
* an exact redirect host wins over a wildcard rule host (`*.example.com` does not stop
  `www.example.com` from redirecting), like nginx's exact `server_name` over a wildcard;
* one trailing "/" of the request URI is dropped (`/` becomes nothing, `/a/` becomes `/a`);
* the status is ingress-nginx's `http-redirect-code` default, 308.

Difference: the port the client put in its Host header is kept (ingress-nginx appends its
HTTPS port when that is not 443, on both listeners).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.types import Redirect, RequestView, RouteDecision

from .rewrite import derive
from .tls import HTTP_REDIRECT_CODE

if TYPE_CHECKING:
    from .matching import HostTable
    from .table import Route

FROM_TO_WWW_KEY = "from-to-www-redirect"


def other_spelling(host: str) -> str | None:
    """`example.com` <-> `www.example.com`; None for a wildcard or empty host."""
    if not host or host.startswith("*"):
        return None
    return host[4:] if host.startswith("www.") else "www." + host


class WwwRedirect:
    """Answers requests for one redirect host (`apply` builds the Location per request)."""

    __slots__ = ("to", "base", "ingress")

    def __init__(self, to: str, base: RouteDecision, ingress: str) -> None:
        self.to = to
        self.base = base
        self.ingress = ingress

    def apply(self, request: RequestView) -> RouteDecision:
        raw = request.headers.get("host") or ""
        colon = raw.rfind(":")
        port = raw[colon:] if colon > 0 and raw[colon + 1:].isdigit() else ""
        uri = request.path
        if uri.endswith("/"):
            uri = uri[:-1]
        location = f"{request.scheme}://{self.to}{port}{uri}"
        return derive(self.base, redirect=Redirect(HTTP_REDIRECT_CODE, location))

    def describe(self, host: str) -> dict:
        return {"host": host, "ingress": self.ingress, "route": self.base.route_name,
                "status": HTTP_REDIRECT_CODE, "location": f"$scheme://{self.to}$request_uri"}


def www_redirects(flagged: list[tuple[str, list[str]]],
                  hosts: HostTable[Route]) -> tuple[dict[str, WwwRedirect], list[tuple[str, str]]]:
    """`flagged`: (Ingress key, its rule hosts) of each Ingress with the annotation. Returns
    redirect host -> redirect, and (Ingress key, message) for each one not made because the
    other spelling has rules of its own."""
    out: dict[str, WwwRedirect] = {}
    skipped: list[tuple[str, str]] = []
    for key, rule_hosts in flagged:
        for host in rule_hosts:
            other = other_spelling(host)
            vhost = hosts.exact.get(host)
            if other is None or other in out or vhost is None:
                continue
            if other in hosts.exact:
                skipped.append((key, f"{host}: {other} has rules of its own, so it is served, "
                                     "not redirected"))
                continue
            routes = vhost.paths.values() + ([vhost.default] if vhost.default else [])
            if not routes:
                continue
            decision = routes[0].primary[0][1].decision
            base = derive(decision, route_name=f"{key}|{other}/({FROM_TO_WWW_KEY})", mirrors=())
            out[other] = WwwRedirect(host, base, key)
    return out, skipped
