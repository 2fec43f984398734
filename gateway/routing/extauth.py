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
* `auth-request-redirect`: the `X-Auth-Request-Redirect` value (default: the request URI).

`Set-Cookie` lines of the service's answer reach the client, on the proxied answer or the
sign-in redirect. In `auth-url` and `auth-signin` these nginx variables are replaced per
request: `$host`, `$http_host`, `$best_http_host`, `$scheme`, `$pass_access_scheme`,
`$request_uri`, `$escaped_request_uri`. An `auth-url` that cannot be used denies the route
(503), as ingress-nginx does: an Ingress asking for a check never goes unchecked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlsplit

from .values import Annotations, split_list

EXT_AUTH_KEYS = ("auth-url", "auth-method", "auth-signin", "auth-signin-redirect-param",
                 "auth-response-headers", "auth-request-redirect")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"})
_HEADER = re.compile(r"^[A-Za-z0-9_-]+$")
_VARIABLE = re.compile(r"\$([a-z_]+)")
VARIABLES = frozenset({"host", "http_host", "best_http_host", "scheme", "pass_access_scheme",
                       "request_uri", "escaped_request_uri"})


@dataclass(frozen=True)
class RequestVars:
    """What the variables stand for in one request."""

    scheme: str
    http_host: str  # the Host header as sent
    host: str  # lower-cased, port stripped
    request_uri: str  # path plus "?query", as received

    def value(self, name: str) -> str:
        if name in ("scheme", "pass_access_scheme"):
            return self.scheme
        if name in ("http_host", "best_http_host"):
            return self.http_host
        if name == "host":
            return self.host
        if name == "request_uri":
            return self.request_uri
        return quote(self.request_uri, safe="")  # escaped_request_uri (set_escape_uri)


def expand(template: str, v: RequestVars) -> str:
    if "$" not in template:
        return template
    return _VARIABLE.sub(lambda m: v.value(m.group(1)), template)


@dataclass(frozen=True)
class ExternalAuth:
    """One Ingress's check; `broken` names why its routes answer 503 instead."""

    url: str = ""
    method: str | None = None
    signin: str | None = None  # with the redirect parameter already added
    response_headers: tuple[str, ...] = ()
    request_redirect: str | None = None
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


def _variables_known(text: str) -> str | None:
    unknown = sorted(set(_VARIABLE.findall(text)) - VARIABLES)
    return f"nginx variable(s) ${', $'.join(unknown)} not supported" if unknown else None


def parse_external_auth(ann: Annotations) -> ExternalAuth | None:
    found = ann.string("auth-url")
    if found is None:
        return None
    full, url = found
    parts = urlsplit(url)
    why = _variables_known(url)
    if why is None and (parts.scheme not in ("http", "https") or not parts.netloc):
        why = f"{url!r} is not an http(s) URL"
    method = None
    found_method = ann.string("auth-method")
    if found_method is not None and why is None:
        method = found_method[1]
        if method not in _METHODS:
            full, why = found_method[0], f"{method!r} is not an HTTP method"
    names: list[str] = []
    found_headers = ann.string("auth-response-headers")
    if found_headers is not None and why is None:
        names = split_list(found_headers[1], ",")
        bad = [n for n in names if not _HEADER.match(n)]
        if bad:
            full, why = found_headers[0], f"invalid header name(s) {', '.join(bad)}"
    signin = None
    found_signin = ann.string("auth-signin")
    if found_signin is not None and why is None:
        why = _variables_known(found_signin[1])
        if why is not None:
            full = found_signin[0]
        else:
            param = ann.string("auth-signin-redirect-param")
            signin = signin_url(found_signin[1], param[1] if param and param[1] else "rd")
    found_redirect = ann.string("auth-request-redirect")
    if why is not None:
        ann.problem(full, f"{why}; the routes of this Ingress answer 503 (denied, as ingress-nginx)")
        return ExternalAuth(broken=why, describe={"denied": why})
    redirect = found_redirect[1] if found_redirect else None
    return ExternalAuth(url=url, method=method, signin=signin, response_headers=tuple(names),
                        request_redirect=redirect,
                        describe={"url": url, "method": method or "GET", "signin": signin,
                                  "responseHeaders": names, "requestRedirect": redirect})
