"""The external auth check (`auth-url`, gateway/routing/extauth.py) on the wire: one
request to the auth service per proxied request, over a keep-alive aiohttp client.

Off the compiled data path on purpose: a route with a check pays a whole HTTP round trip
for it, so the coroutine and aiohttp's parsing are not what its cost is made of.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from gateway.proxy.heads import RequestHead
from gateway.routing.extauth import ExternalAuth, cache_ttl
from gateway.types import RequestView, Timeouts
from gateway.variables import expand

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
    to_client: bytes = b""  # header lines for the client's answer (WWW-Authenticate)
    cookies: bytes = b""  # the service's Set-Cookie lines (ExchangeBase.auth_lines decides where)
    to_upstream: tuple[tuple[str, str | None], ...] = ()  # auth-response-headers; None: remove


@dataclass(frozen=True)
class Answer:
    """What the auth service said: its status and the headers a verdict may use."""

    status: int
    headers: tuple[tuple[str, str], ...]  # lower-cased names

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def get(self, name: str) -> str | None:
        found = self.all(name.lower())
        return found[0] if found else None


#: An answer that cannot be had (refused, timeout, bad URL): a 500, never cached.
UNAVAILABLE = Answer(0, ())
#: Cached answers per listener, at most (the oldest go first).
CACHE_SIZE = 10000


class AuthChecker:
    """One per proxy listener; the aiohttp session is made on first use, on the running loop.
    With `auth-cache-key`, answers are kept per (auth-url, expanded key) for the time
    `auth-cache-duration` gives their status, unless they carry `Set-Cookie` or a
    `Cache-Control` of no-store, no-cache or private (nginx's proxy_cache rules); a
    `Cache-Control: max-age` sets the time instead."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[tuple[str, str], tuple[float, Answer]] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(self, auth: ExternalAuth, h: RequestHead, v: RequestView,
                    timeouts: Timeouts) -> Verdict:
        url = expand(auth.url, v)
        key = (url, expand(auth.cache_key, v)) if auth.cache_key is not None else None
        now = asyncio.get_running_loop().time()
        cached = self._cache.get(key) if key is not None else None
        if cached is not None and cached[0] > now:
            answer = cached[1]
        else:
            answer = await self._ask(auth, h, v, url, timeouts)
            ttl = _ttl(auth, answer) if key is not None else 0.0
            if ttl > 0 and key is not None:
                self._cache.pop(key, None)
                if len(self._cache) >= CACHE_SIZE:
                    del self._cache[next(iter(self._cache))]
                self._cache[key] = (now + ttl, answer)
        return _verdict(auth, answer, v, url)

    async def _ask(self, auth: ExternalAuth, h: RequestHead, v: RequestView, url: str,
                   timeouts: Timeouts) -> Answer:
        uri, scheme, client_ip = v.path, v.scheme, v.client_ip
        headers: list[tuple[str, str]] = [
            (n.decode("latin-1"), value.decode("latin-1")) for n, value in h.lower
            if n.decode("latin-1").lower() not in _NOT_FORWARDED]
        headers += [
            ("Host", urlsplit(url).hostname or ""),
            ("X-Original-URL", f"{scheme}://{h.host_raw.decode('latin-1')}{uri}"),
            ("X-Original-Method", h.method.decode("latin-1")),
            ("X-Sent-From", "nginx-ingress-controller"),
            ("X-Real-IP", client_ip),
            ("X-Forwarded-For", client_ip),
            ("X-Auth-Request-Redirect", auth.request_redirect or uri),
            ("X-Request-ID", h.request_id.decode("latin-1")),
        ]
        if auth.method:
            headers += [("X-Original-URI", uri), ("X-Scheme", scheme)]
        for name, template in auth.proxy_set_headers:  # nginx proxy_set_header: replaces
            lower = name.lower()
            headers = [(n, value) for n, value in headers if n.lower() != lower]
            value = _safe(expand(template, v))
            if value:
                headers.append((name, value))
        timeout = aiohttp.ClientTimeout(total=timeouts.total or None, sock_connect=timeouts.connect,
                                        sock_read=timeouts.read)
        try:
            async with self._client().request(
                    auth.method or "GET", url, headers=headers, allow_redirects=False,
                    timeout=timeout) as resp:
                await resp.content.read(_MAX_BODY)
                return Answer(resp.status, tuple((n.lower(), val) for n, val in resp.headers.items()))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            log.warning("auth service %s failed: %s", url, str(exc) or type(exc).__name__)
            return UNAVAILABLE


def _ttl(auth: ExternalAuth, answer: Answer) -> float:
    if answer is UNAVAILABLE or answer.get("set-cookie") is not None:
        return 0.0
    directives = [d.strip().lower() for d in ",".join(answer.all("cache-control")).split(",")]
    if any(d in ("no-store", "no-cache", "private") for d in directives):
        return 0.0
    for d in directives:
        if d.startswith("max-age="):
            try:
                return float(int(d[8:]))
            except ValueError:
                return 0.0
    return cache_ttl(auth, answer.status)


def _verdict(auth: ExternalAuth, answer: Answer, v: RequestView, url: str) -> Verdict:
    """nginx auth_request: 2xx lets the request through; 401 and 403 are the answer (a 401 may
    become the sign-in redirect); anything else is a 500."""
    status = answer.status
    cookies = _lines("Set-Cookie", answer.all("set-cookie"))
    if 200 <= status < 300:
        return Verdict(0, cookies=cookies, to_upstream=tuple(
            (name, answer.get(name)) for name in auth.response_headers))
    if status == 401 and auth.signin is not None:
        where = expand(auth.signin, v)
        return Verdict(302, f"redirecting to {where}", where, cookies=cookies)
    if status == 401:
        return Verdict(401, "unauthorized", cookies=cookies,
                       to_client=_lines("WWW-Authenticate", answer.all("www-authenticate")))
    if status == 403:
        return Verdict(403, "forbidden", cookies=cookies)
    if status:
        log.warning("auth service %s answered %d: answering 500", url, status)
        return Verdict(500, f"auth service answered {status}", cookies=cookies)
    return Verdict(500, "auth service unavailable")


def _lines(name: str, values: list[str]) -> bytes:
    return b"".join(b"%s: %s\r\n" % (name.encode(), _safe(v).encode("latin-1", "replace")) for v in values)


def _safe(value: str) -> str:
    """No line breaks from a header value into our head."""
    return value.replace("\r", " ").replace("\n", " ")
