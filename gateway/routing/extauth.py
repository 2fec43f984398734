"""ingress-nginx external authentication: `auth-url` and its companions (rule scope, main
Ingresses; a canary's requests go through its main Ingress's check, as in ingress-nginx).

Before a request is proxied, the gateway asks the `auth-url` service (nginx `auth_request`):
a request without a body carrying the client's headers plus `X-Original-URL`,
`X-Original-Method`, `X-Auth-Request-Redirect`, `X-Sent-From`, `X-Real-IP`,
`X-Forwarded-For` and `X-Request-ID`. A 2xx answer lets the request through; 401 or 403 is
the client's answer (401 with the service's `WWW-Authenticate`), or with `auth-signin` a 401
becomes a 302 to the sign-in page; any other answer, or no answer, is a 500.

* `auth-url`: the service, `http(s)://host[:port]/path`;
* `auth-method`: the check's method (default GET, nginx's subrequest method); setting it also
  sends `X-Original-URI` and `X-Scheme`, as ingress-nginx does;
* `auth-signin`: where a 401 redirects, with `rd=<the original URL>` added unless the URL
  already has it (`auth-signin-redirect-param` renames `rd`);
* `auth-response-headers`: headers copied from the service's 2xx answer onto the proxied
  request (a listed header the answer lacks is removed from the request);
* `auth-request-redirect`: the `X-Auth-Request-Redirect` value (default: the request URI);
* `auth-proxy-set-headers`: a ConfigMap (`name` in the Ingress's namespace, or
  `namespace/name`) whose entries are headers set on the check (nginx `proxy_set_header`:
  nginx variables allowed; an empty value removes the header). The ConfigMap is read when
  the route table is built, and a change to it rebuilds the table.

* `auth-cache-key`, `auth-cache-duration`: answers are kept per expanded key for the time
  nginx's `proxy_cache_valid` entries give their status (default `200 202 401 5m`), except
  answers with `Set-Cookie` or `Cache-Control` no-store/no-cache/private; `max-age` wins.

`Set-Cookie` lines of the service's answer reach the client on 2xx/3xx answers (the proxied
answer, the sign-in redirect), as nginx's `add_header`; with `auth-always-set-cookie` on
every answer. In `auth-url`, `auth-signin`, `auth-cache-key` and the
`auth-proxy-set-headers` values, nginx variables are replaced per request
(gateway/variables.py). An `auth-url` that cannot be used (or an unknown variable, a bad
method, header name or cache duration) denies the route (503), as ingress-nginx does: an
Ingress asking for a check never goes unchecked.

Gateway-wide (ingress-nginx ConfigMap keys, here `python -m gateway` flags of the same names):
`global-auth-url` and its `global-auth-*` companions (the values of the annotations of the
same suffix) check every route whose Ingress has no `auth-url` of its own, unless the Ingress
says `enable-global-auth: "false"`. `no-auth-locations` (default
`/.well-known/acme-challenge`) lists path prefixes whose routes skip every check, external
or basic: an Ingress path starting with one is served unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.variables import unknown

from .values import NGINX, Annotations, Problem, object_ref, split_list

EXT_AUTH_KEYS = ("auth-url", "auth-method", "auth-signin", "auth-signin-redirect-param",
                 "auth-response-headers", "auth-request-redirect", "auth-cache-key",
                 "auth-cache-duration", "auth-always-set-cookie")
#: Per Ingress only (ingress-nginx has no global-auth-proxy-set-headers).
PROXY_SET_HEADERS_KEY = "auth-proxy-set-headers"
#: (namespace, name) -> the ConfigMap object, or None when there is none.
ConfigMapLookup = Callable[[str, str], "Mapping[str, Any] | None"]
#: ingress-nginx's auth-cache-duration default (nginx proxy_cache_valid syntax).
DEFAULT_CACHE_DURATION = "200 202 401 5m"
_TIME = re.compile(r"^(\d+)(ms|s|m|h|d|w|M|y)$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000,
            "y": 31536000}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"})
_HEADER = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ExternalAuth:
    """One Ingress's check; `broken` names why its routes answer 503 instead."""

    url: str = ""
    method: str | None = None
    signin: str | None = None  # with the redirect parameter already added
    response_headers: tuple[str, ...] = ()
    request_redirect: str | None = None
    #: auth-cache-key: the cache key template; None: every request is checked.
    cache_key: str | None = None
    #: auth-cache-duration: (statuses, seconds) pairs; statuses None: any status.
    cache_valid: tuple[tuple[frozenset[int] | None, float], ...] = ()
    #: auth-always-set-cookie: the service's Set-Cookie on every answer, not only 2xx/3xx.
    always_set_cookie: bool = False
    #: auth-proxy-set-headers: (header, value template) set on the check ("" removes it).
    proxy_set_headers: tuple[tuple[str, str], ...] = ()
    broken: str | None = None
    describe: dict = field(default_factory=dict, compare=False)


def signin_url(signin: str, param: str) -> str:
    """ingress-nginx's buildAuthSignURL: the original URL added as `param`, unless present."""
    query = urlsplit(signin).query
    target = "$pass_access_scheme://$http_host$escaped_request_uri"
    if not query:
        return f"{signin}?{param}={target}"
    if parse_qs(query).get(param):
        return signin
    return f"{signin}&{param}={target}"


def cache_validity(text: str) -> tuple[frozenset[int] | None, float] | None:
    """One nginx `proxy_cache_valid` entry: `[code ...|any] time [time ...]` (no code: 200,
    301, 302); None when it is not one."""
    codes: list[int] = []
    anything = False
    seconds = 0.0
    for word in text.split():
        time = _TIME.match(word)
        if time:
            seconds += int(time.group(1)) * _SECONDS[time.group(2)]
        elif seconds or not (word == "any" or (len(word) == 3 and word.isdigit())):
            return None  # a code after the time, or neither
        elif word == "any":
            anything = True
        else:
            codes.append(int(word))
    if not seconds:
        return None
    return None if anything else frozenset(codes or (200, 301, 302)), seconds


def cache_ttl(auth: ExternalAuth, status: int) -> float:
    """How long an answer with this status stays cached (0: not at all)."""
    for codes, seconds in auth.cache_valid:
        if codes is None or status in codes:
            return seconds
    return 0.0


class _Unusable(Exception):
    """A setting that denies the route: (full annotation key, why)."""


def _value(ann: Annotations, key: str, problem: Callable[[str], str | None]) -> str | None:
    found = ann.string(key)
    if found is None:
        return None
    why = problem(found[1])
    if why is not None:
        raise _Unusable(found[0], why)
    return found[1]


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"{url!r} is not an http(s) URL"
    return unknown(url)


def _method_problem(method: str) -> str | None:
    return None if method in _METHODS else f"{method!r} is not an HTTP method"


def _headers_problem(text: str) -> str | None:
    bad = [n for n in split_list(text, ",") if not _HEADER.match(n)]
    return f"invalid header name(s) {', '.join(bad)}" if bad else None


def _durations_problem(text: str) -> str | None:
    bad = [e for e in split_list(text, ",") if cache_validity(e) is None]
    return f"invalid cache duration(s) {', '.join(bad)}" if bad else None


def _proxy_set_headers(ann: Annotations, namespace: str,
                       configmap: ConfigMapLookup | None) -> tuple[tuple[str, str], ...]:
    found = ann.string(PROXY_SET_HEADERS_KEY)
    if found is None:
        return ()
    ref = object_ref(found[1], namespace)
    if ref is None:
        raise _Unusable(found[0], f"{found[1]!r} is not a ConfigMap name (name or namespace/name)")
    obj = configmap(*ref) if configmap is not None else None
    if obj is None:
        raise _Unusable(found[0], f"ConfigMap {'/'.join(ref)} not found")
    data = obj.get("data") or {}
    why = obj.get("unusable") or header_map_problem(data)
    if why is not None:
        raise _Unusable(found[0], f"ConfigMap {'/'.join(ref)}: {why}")
    return tuple(sorted((str(k), str(v).strip()) for k, v in data.items()))


#: The largest auth-proxy-set-headers ConfigMap (the gateway holds no bigger ConfigMap's data).
MAX_HEADER_MAP = 65536


def header_map_problem(data: Mapping[str, Any]) -> str | None:
    """Why a ConfigMap's data cannot be auth-proxy-set-headers (None: it can)."""
    bad = sorted(str(k) for k, v in data.items()
                 if not _HEADER.match(str(k)) or "\r" in str(v) or "\n" in str(v))
    if bad:
        return f"invalid header(s) {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "")
    if sum(len(str(k)) + len(str(v)) for k, v in data.items()) > MAX_HEADER_MAP:
        return f"larger than {MAX_HEADER_MAP // 1024} KiB"
    for value in data.values():
        why = unknown(str(value))
        if why is not None:
            return why
    return None


def parse_external_auth(ann: Annotations, namespace: str = "",
                        configmap: ConfigMapLookup | None = None) -> ExternalAuth | None:
    """`configmap` finds the auth-proxy-set-headers ConfigMap (None: there are none)."""
    if ann.string("auth-url") is None:
        ann.orphans((*EXT_AUTH_KEYS[1:], PROXY_SET_HEADERS_KEY), "auth-url")
        return None
    try:
        url = _value(ann, "auth-url", _url_problem) or ""
        set_headers = _proxy_set_headers(ann, namespace, configmap)
        method = _value(ann, "auth-method", _method_problem)
        names = split_list(_value(ann, "auth-response-headers", _headers_problem) or "", ",")
        signin = _value(ann, "auth-signin", unknown)
        cache_key = _value(ann, "auth-cache-key", unknown)
        durations = _value(ann, "auth-cache-duration", _durations_problem)  # ingress-nginx: always
    except _Unusable as exc:
        full, why = exc.args
        ann.problem(full, f"{why}; the routes of this Ingress answer 503 (denied, as ingress-nginx)")
        return ExternalAuth(broken=why, describe={"denied": why})
    if signin is not None:
        param = ann.string("auth-signin-redirect-param")
        signin = signin_url(signin, param[1] if param and param[1] else "rd")
    cache_valid: tuple[tuple[frozenset[int] | None, float], ...] = ()
    if cache_key is not None:
        entries = split_list(durations, ",") if durations else [DEFAULT_CACHE_DURATION]
        cache_valid = tuple(v for v in map(cache_validity, entries) if v is not None)
    found_redirect = ann.string("auth-request-redirect")
    redirect = found_redirect[1] if found_redirect else None
    always = bool(ann.boolean("auth-always-set-cookie"))
    return ExternalAuth(url=url, method=method, signin=signin, response_headers=tuple(names),
                        request_redirect=redirect, cache_key=cache_key, cache_valid=cache_valid,
                        always_set_cookie=always, proxy_set_headers=set_headers,
                        describe={"url": url, "method": method or "GET", "signin": signin,
                                  "responseHeaders": names, "requestRedirect": redirect,
                                  "cacheKey": cache_key, "alwaysSetCookie": always,
                                  "proxySetHeaders": dict(set_headers),
                                  "cacheValid": [{"statuses": sorted(c) if c is not None else "any",
                                                  "seconds": t} for c, t in cache_valid]})


#: ingress-nginx's no-auth-locations default.
DEFAULT_NO_AUTH_LOCATIONS = "/.well-known/acme-challenge"
#: The gateway-wide settings: "global-" + each per-Ingress key.
GLOBAL_AUTH_KEYS = tuple(f"global-{key}" for key in EXT_AUTH_KEYS)


@dataclass(frozen=True)
class AuthScope:
    """Gateway-wide auth: the check of Ingresses without `auth-url` (`global-auth-*`), and
    the path prefixes no check applies to (`no-auth-locations`)."""

    check: ExternalAuth | None = None
    exempt: tuple[str, ...] = (DEFAULT_NO_AUTH_LOCATIONS,)

    def exempts(self, path: str) -> bool:
        """ingress-nginx's isLocationInLocationList: the Ingress path starts with one."""
        return path.startswith(self.exempt)


def global_auth_scope(settings: Mapping[str, str | None],
                      no_auth_locations: str = DEFAULT_NO_AUTH_LOCATIONS) -> AuthScope:
    """The AuthScope of `global-auth-*` settings (keys as in GLOBAL_AUTH_KEYS; None or ""
    is unset). Raises ValueError naming the setting when one cannot be used: a gateway-wide
    check that is half set up must stop the start, not leave every route unchecked."""
    given = {k: v.strip() for k, v in settings.items() if v is not None and v.strip()}
    not_ours = sorted(set(given) - set(GLOBAL_AUTH_KEYS))
    if not_ours:
        raise ValueError(f"{not_ours[0]}: not a global auth setting")
    if given and "global-auth-url" not in given:
        raise ValueError(f"{sorted(given)[0]}: set without global-auth-url")
    problems: list[Problem] = []
    ann = Annotations("global", {NGINX + k[len("global-"):]: v for k, v in given.items()},
                      problems)
    check = parse_external_auth(ann)
    if problems:
        key = (problems[0].annotation or NGINX).removeprefix(NGINX)
        why = check.broken if check is not None and check.broken else problems[0].message
        raise ValueError(f"global-{key}: {why.removesuffix('; ignored')}")
    if check is not None:
        check = replace(check, describe={**check.describe, "global": True})
    return AuthScope(check, tuple(split_list(no_auth_locations, ",")))
