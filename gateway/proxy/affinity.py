"""Cookie session affinity on the data path: read the request's sticky cookie, write the
response's `Set-Cookie` line (attributes as ingress-nginx's sticky balancer emits them).

Wiring (`Exchange._pick_sticky`, only when `decision.affinity` is set): the cookie is read
once per request, passed as `sticky=` to every pick (the backend, then its fallbacks), and
for the endpoint picked -- per attempt, so the last attempt wins --
    value = clusters.sticky_cookie(backend_used, ep, decision.affinity, current=sticky,
                                   retried=<an earlier attempt failed>)
    exchange.resp_extra = set_cookie_header(decision.affinity, ep, path, value=value)
which response.py appends to the response head, next to the upstream's own Set-Cookie.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import formatdate

from gateway.routing.affinity import StickyValue, endpoint_key, read_sticky_cookie
from gateway.types import Endpoint, SessionAffinity

# Characters allowed in a cookie attribute value we emit (no CTLs, no ';', no spaces).
_SAFE = re.compile(r"^[\x21-\x3a\x3c-\x7e]+$")


def request_cookie(affinity: SessionAffinity | None, headers: Mapping[str, str]) -> str | None:
    """The request's sticky cookie value (None: no affinity, no cookie, or not one of ours)."""
    if affinity is None:
        return None
    header = headers.get("cookie")
    return read_sticky_cookie(header, affinity.cookie) if header else None


def set_cookie_header(affinity: SessionAffinity, endpoint: Endpoint, route_path: str, *,
                      value: str | None = None, now: float | None = None,
                      https: bool = False) -> bytes:
    """The whole `Set-Cookie: ...\\r\\n` line pinning the client to `endpoint`.

    `value`: from `ClusterManager.sticky_cookie` (it knows the backend's ring and tag);
    without it the persistent form naming `endpoint` is used. Attributes, in
    lua-resty-cookie's order: Expires (session-cookie-expires seconds from now), Max-Age,
    Domain, Path (session-cookie-path, else the matched rule's `route_path`), Secure
    (session-cookie-secure; unset: when the request came over HTTPS, `https`, as ingress-nginx
    does), HttpOnly (always), SameSite.
    """
    if value is None:
        value = StickyValue(endpoint_key(endpoint), None, affinity.backend_tag).encode()
    parts = [f"{affinity.cookie}={value}"]
    if affinity.expires is not None:
        moment = (time.time() if now is None else now) + affinity.expires
        parts.append("Expires=" + formatdate(moment, usegmt=True))
    if affinity.max_age is not None:
        parts.append(f"Max-Age={int(affinity.max_age)}")
    domain = affinity.domain
    if domain and _SAFE.match(domain):
        parts.append(f"Domain={domain}")
    path = next((p for p in (affinity.path, route_path) if p and p[0] == "/" and _SAFE.match(p)),
                "/")
    parts.append(f"Path={path}")
    if affinity.secure or (affinity.secure is None and https):
        parts.append("Secure")
    parts.append("HttpOnly")
    if affinity.samesite in ("None", "Lax", "Strict"):
        parts.append(f"SameSite={affinity.samesite}")
    line = "Set-Cookie: " + "; ".join(parts) + "\r\n"
    if not _SAFE.match(affinity.cookie) or "=" in affinity.cookie or not _SAFE.match(value):
        raise ValueError(f"unsafe cookie name or value: {affinity.cookie!r}={value!r}")
    return line.encode("ascii")
