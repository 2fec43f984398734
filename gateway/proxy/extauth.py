"""The external auth check (`auth-url`, gateway/routing/extauth.py) on the wire: one
request to the auth service per proxied request, over a keep-alive aiohttp client.

Off the compiled data path on purpose: a route with a check pays a whole HTTP round trip
for it, so the coroutine and aiohttp's parsing are not what its cost is made of.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from gateway.proxy.heads import RequestHead
from gateway.routing.extauth import ExternalAuth, RequestVars, expand
from gateway.types import Timeouts

log = logging.getLogger("gateway.proxy")

#: Not forwarded to the auth service: hop-by-hop, framing (it gets no body), and what the
#: check sets itself.
_NOT_FORWARDED = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "content-length", "expect", "host", "x-forwarded-proto", "x-original-url",
    "x-original-method", "x-sent-from", "x-real-ip", "x-forwarded-for", "x-request-id",
    "x-auth-request-redirect", "x-original-uri", "x-scheme",
})
#: An auth answer's body is read and dropped, up to this much (then the connection is not reused).
_MAX_BODY = 1 << 16


@dataclass
class Verdict:
    """What the check decided: the client's answer (0: proxy the request) and the lines to add."""

    status: int
    text: str = ""
    location: str | None = None
    to_client: bytes = b""  # header lines for the client's answer (Set-Cookie, WWW-Authenticate)
    to_upstream: tuple[tuple[str, str | None], ...] = ()  # auth-response-headers; None: remove


class AuthChecker:
    """One per proxy listener; the aiohttp session is made on first use, on the running loop."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(self, auth: ExternalAuth, h: RequestHead, scheme: str, client_ip: str,
                    timeouts: Timeouts) -> Verdict:
        v = RequestVars(scheme, h.host_raw.decode("latin-1"), h.host, h.path.decode("latin-1"))
        url = expand(auth.url, v)
        uri = v.request_uri
        headers: list[tuple[str, str]] = [
            (n.decode("latin-1"), value.decode("latin-1")) for n, value in h.lower
            if n.decode("latin-1").lower() not in _NOT_FORWARDED]
        headers += [
            ("Host", urlsplit(url).hostname or ""),
            ("X-Original-URL", f"{scheme}://{v.http_host}{uri}"),
            ("X-Original-Method", h.method.decode("latin-1")),
            ("X-Sent-From", "nginx-ingress-controller"),
            ("X-Real-IP", client_ip),
            ("X-Forwarded-For", client_ip),
            ("X-Auth-Request-Redirect", auth.request_redirect or uri),
            ("X-Request-ID", h.request_id.decode("latin-1")),
        ]
        if auth.method:
            headers += [("X-Original-URI", uri), ("X-Scheme", scheme)]
        timeout = aiohttp.ClientTimeout(total=timeouts.total or None, sock_connect=timeouts.connect,
                                        sock_read=timeouts.read)
        try:
            async with self._client().request(
                    auth.method or "GET", url, headers=headers, allow_redirects=False,
                    timeout=timeout) as resp:
                await resp.content.read(_MAX_BODY)
                status = resp.status
                cookies = resp.headers.getall("Set-Cookie", [])
                if 200 <= status < 300:
                    return Verdict(0, to_client=_lines("Set-Cookie", cookies), to_upstream=tuple(
                        (name, resp.headers.get(name)) for name in auth.response_headers))
                if status == 401 and auth.signin is not None:
                    where = expand(auth.signin, v)
                    return Verdict(302, f"redirecting to {where}", where, _lines("Set-Cookie", cookies))
                if status in (401, 403):
                    challenge = resp.headers.getall("WWW-Authenticate", []) if status == 401 else []
                    return Verdict(status, "unauthorized" if status == 401 else "forbidden",
                                   to_client=_lines("WWW-Authenticate", challenge))
                log.warning("auth service %s answered %d: answering 500", url, status)
                return Verdict(500, f"auth service answered {status}")
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            log.warning("auth service %s failed: %s", url, exc or type(exc).__name__)
            return Verdict(500, "auth service unavailable")


def _lines(name: str, values: list[str]) -> bytes:
    return b"".join(b"%s: %s\r\n" % (name.encode(), _safe(v).encode("latin-1", "replace")) for v in values)


def _safe(value: str) -> str:
    """No line breaks from a header value into our head."""
    return value.replace("\r", " ").replace("\n", " ")
