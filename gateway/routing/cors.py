"""ingress-nginx `enable-cors` and its `cors-*` settings (rule scope, main Ingresses).

With `enable-cors: "true"`, a request whose `Origin` is allowed gets the CORS response
headers, and an allowed `OPTIONS` request (a preflight) is answered `204` by the gateway
itself, as ingress-nginx's CORS block does:

* `cors-allow-origin` (default `*`): `*` alone allows every request, `Origin` or not, and
  answers `Access-Control-Allow-Origin: *`; otherwise a comma-separated list of origins
  (`https://app.example.com`, `http://localhost:8080`, one `*` standing for one DNS label
  as in `https://*.example.com`), compared case-insensitively with the whole `Origin`,
  which is echoed back. A request whose `Origin` is not listed gets no CORS headers and
  its `OPTIONS` is proxied like any request;
* `cors-allow-methods`, `cors-allow-headers`, `cors-expose-headers`, `cors-max-age`,
  `cors-allow-credentials`: ingress-nginx's defaults; a value that is not valid is
  reported and the default used;
* the headers replace any of the same name from the upstream (`more_set_headers`).

Difference: the origin list is matched against the whole `Origin` (ingress-nginx's regex
is anchored only at its end).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .values import Annotations, split_list

CORS_KEYS = ("enable-cors", "cors-allow-origin", "cors-allow-methods", "cors-allow-headers",
             "cors-expose-headers", "cors-allow-credentials", "cors-max-age")
DEFAULT_METHODS = "GET, PUT, POST, DELETE, PATCH, OPTIONS"
DEFAULT_HEADERS = ("DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,"
                   "Content-Type,Range,Authorization")
DEFAULT_MAX_AGE = 1728000
_METHODS = re.compile(r"^[A-Za-z]+(\s*,\s*[A-Za-z]+)*$")
_HEADERS = re.compile(r"^[A-Za-z0-9_-]+(\s*,\s*[A-Za-z0-9_-]+)*$")
_ORIGIN = re.compile(r"^https?://(\*\.)?[A-Za-z0-9.-]+(:[0-9]+)?$")


@dataclass(frozen=True, eq=False)
class CorsPolicy:
    """One Ingress's CORS settings, with the header lines prebuilt."""

    any_origin: bool
    origins: tuple[re.Pattern[str], ...]
    lines: bytes  # every line but Access-Control-Allow-Origin (answers and preflights)
    preflight_lines: bytes  # those of a preflight only (Max-Age, Content-Type)
    describe: dict

    def allow_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for this request, None: no CORS headers."""
        if self.any_origin:
            return "*"
        if origin and any(p.match(origin) for p in self.origins):
            return origin
        return None

    def headers(self, origin: str | None, preflight: bool) -> bytes:
        """The header lines for this request (b"": its origin is not allowed)."""
        value = self.allow_origin(origin)
        if value is None:
            return b""
        head = b"Access-Control-Allow-Origin: " + value.encode("latin-1", "replace") + b"\r\n"
        return head + self.lines + (self.preflight_lines if preflight else b"")


def parse_cors(ann: Annotations) -> CorsPolicy | None:
    if not ann.boolean("enable-cors"):
        ann.orphans(CORS_KEYS[1:], 'enable-cors: "true"')
        return None
    origins_text = _setting(ann, "cors-allow-origin", "*", _origins_ok)
    items = split_list(origins_text)
    any_origin = items == ["*"]
    patterns = tuple(_origin_pattern(o) for o in items if o != "*")
    methods = _setting(ann, "cors-allow-methods", DEFAULT_METHODS, _METHODS.match)
    headers = _setting(ann, "cors-allow-headers", DEFAULT_HEADERS, _HEADERS.match)
    expose = _setting(ann, "cors-expose-headers", "", lambda t: _HEADERS.match(t) or t == "*")
    credentials = ann.boolean("cors-allow-credentials")
    credentials = True if credentials is None else credentials
    max_age = ann.integer("cors-max-age", low=0)
    max_age = DEFAULT_MAX_AGE if max_age is None else max_age
    lines = b""
    if credentials:
        lines += b"Access-Control-Allow-Credentials: true\r\n"
    lines += b"Access-Control-Allow-Methods: " + methods.encode() + b"\r\n"
    lines += b"Access-Control-Allow-Headers: " + headers.encode() + b"\r\n"
    if expose:
        lines += b"Access-Control-Expose-Headers: " + expose.encode() + b"\r\n"
    lines += b"Access-Control-Max-Age: %d\r\n" % max_age
    preflight = b"Content-Type: text/plain charset=UTF-8\r\n"
    return CorsPolicy(any_origin, patterns, lines, preflight, {
        "allowOrigin": items, "allowMethods": methods, "allowHeaders": headers,
        "exposeHeaders": expose, "allowCredentials": credentials, "maxAge": max_age})


def _setting(ann: Annotations, key: str, default: str, valid) -> str:
    found = ann.string(key)
    if found is None:
        return default
    full, text = found
    if not valid(text):
        ann.problem(full, f"{text!r} is not valid here; the default {default!r} is used")
        return default
    return text


def _origins_ok(text: str) -> bool:
    items = split_list(text)
    return bool(items) and (items == ["*"] or all(_ORIGIN.match(i) for i in items))


def _origin_pattern(origin: str) -> re.Pattern[str]:
    """`https://*.example.com` -> one DNS label in place of the `*`; the whole Origin."""
    escaped = re.escape(origin).replace(r"\*", "[A-Za-z0-9-]+", 1)
    return re.compile(f"^{escaped}$", re.IGNORECASE)
