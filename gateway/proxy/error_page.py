"""custom-http-errors on the data path: the request that asks the default backend for a page.

ingress-nginx answers a listed upstream status with `error_page <code> = @custom_...`, a
named location: nginx keeps the method (and the buffered body) for named locations, the
location rewrites the path to `/` (`rewrite (.*) / break` keeps the query string) and sets
`X-Code`, `X-Format` ($http_accept), `X-Original-URI` ($request_uri), `X-Namespace`,
`X-Ingress-Name`, `X-Service-Name`, `X-Service-Port`, `X-Request-ID` and `Host` (the
client's). This module builds that head from the original request's; the exchange
(gateway/proxy/response.py `_intercept`) sends it like a retry. Only runs on an intercepted
answer, so it stays interpreted.
"""

from __future__ import annotations

from typing import Final

from gateway.proxy.heads import CRLF, RequestHead, upstream_head
from gateway.proxy.pool import Owner

#: Headers the error-page request sets itself: a client's own values never pass (nginx's
#: proxy_set_header replaces them; an empty $http_accept sends no X-Format at all).
ERROR_HEADERS: Final = frozenset({
    b"x-code", b"x-format", b"x-original-uri", b"x-namespace", b"x-ingress-name",
    b"x-service-name", b"x-service-port",
})


def error_page_head(h: RequestHead, code: int, static: tuple[tuple[str, str], ...]) -> bytes:
    """The head of the default-backend request for an answer `code` to request `h`.

    `static`: the decision's X-Namespace/X-Ingress-Name/X-Service-Name/X-Service-Port.
    X-Request-ID and X-Forwarded-* are the original request's (already in `h.parts`)."""
    src = h.parts
    parts: list[bytes] = []
    i, n = 0, len(src)
    # The client's header lines come first, four items each (name, ": ", value, CRLF);
    # the X-Forwarded-*/X-Request-ID lines after them are kept as they are.
    while i + 3 < n and src[i + 1] == b": " and src[i + 3] == CRLF:
        if src[i].lower() not in ERROR_HEADERS:
            parts += src[i:i + 4]
        i += 4
    parts += src[i:]
    accept = [v for k, v in h.lower if k.lower() == b"accept"]
    parts += (b"X-Code: ", b"%d" % code, CRLF, b"X-Original-URI: ", h.path, CRLF)
    if accept:
        parts += (b"X-Format: ", b", ".join(accept), CRLF)
    for name, value in static:
        parts += (name.encode("latin-1"), b": ", value.encode("latin-1", "replace"), CRLF)
    mark = h.path.find(b"?")
    path = b"/" + h.path[mark:] if mark >= 0 else b"/"
    return upstream_head(h, parts, h.host_raw, path)


#: The owner of an upstream connection whose answer is dropped unread: the rest of the
#: current read goes nowhere while the connection closes.
DISCARD: Final = Owner()
