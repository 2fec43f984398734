"""nginx variables (`$host`, `${arg_uid}`, `$http_x_user`, ...): the one grammar every
template of ours uses, computed from a RequestView.

Used by `upstream-hash-by` (routing validates, the balancer hashes), by the `auth-url`
family (`auth-url`, `auth-signin`, `auth-cache-key`, `auth-proxy-set-headers` values) and by
`mirror-target`. Pure and import-light, so routing can validate a template with exactly the
grammar the data path later computes.

The variables are listed in gateway/README.md (nginx variables).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import quote

from gateway.types import RequestView

KeyFunc = Callable[[RequestView], str]


def _query(r: RequestView) -> str:
    _, _, q = r.path.partition("?")
    return q


def _arg(name: str) -> KeyFunc:
    """nginx $arg_<name>: the raw value of the first such query argument, name case-insensitive."""
    def get(r: RequestView) -> str:
        q = _query(r)
        if not q:
            return ""
        for part in q.split("&"):
            k, _, v = part.partition("=")
            if k.lower() == name:
                return v
        return ""
    return get


def cookie_value(header: str, name: str) -> str | None:
    """nginx $cookie_<name>: the first cookie with this name (lower-case; matched
    case-insensitively) in a Cookie header (repeated headers arrive joined with ", ")."""
    for part in header.replace(",", ";").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.lower() == name:
            return value
    return None


def _cookie(name: str) -> KeyFunc:
    return lambda r: cookie_value(r.headers.get("cookie", ""), name) or ""


def _header(name: str) -> KeyFunc:
    return lambda r: r.headers.get(name, "")


def basic_token(authorization: str) -> bytes | None:
    """The decoded `user:password` of a `Basic` Authorization header; None: not one."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _remote_user(r: RequestView) -> str:
    token = basic_token(r.headers.get("authorization", ""))
    return "" if token is None else token.decode("latin-1").partition(":")[0]


_SIMPLE: dict[str, KeyFunc] = {
    "request_uri": lambda r: r.path,
    "uri": lambda r: r.path.partition("?")[0],
    "args": _query,
    "query_string": _query,
    "escaped_request_uri": lambda r: quote(r.path, safe=""),
    "host": lambda r: r.host,
    "best_http_host": lambda r: r.headers.get("host", ""),
    "scheme": lambda r: r.scheme,
    "pass_access_scheme": lambda r: r.scheme,
    "remote_addr": lambda r: r.client_ip,
    "binary_remote_addr": lambda r: r.client_ip,
    "remote_user": _remote_user,
    "request_method": lambda r: r.method,
}

#: An nginx variable reference: `$name` or `${name}`.
VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
#: Variables computed directly; the prefixed families follow.
SIMPLE_NAMES = frozenset(_SIMPLE)
PREFIXES = ("http_", "arg_", "cookie_")
#: What an error message lists as supported.
SUPPORTED = ", ".join(f"${n}" for n in sorted(SIMPLE_NAMES)) + ", $http_<header>, $arg_<name>, $cookie_<name>"


def known(name: str) -> bool:
    """Can a key function compute `$name`?"""
    lower = name.lower()
    return lower in _SIMPLE or any(lower.startswith(p) and len(lower) > len(p) for p in PREFIXES)


def names(template: str) -> list[str]:
    """The variables a template names, in order."""
    return [m.group(1) or m.group(2) for m in VARIABLE.finditer(template)]


def unknown(template: str) -> str | None:
    """Why a template cannot be computed (variables we do not know), or None."""
    bad = sorted({n for n in names(template) if not known(n)})
    return f"nginx variable(s) ${', $'.join(bad)} not supported" if bad else None


def _var(name: str) -> KeyFunc:
    name = name.lower()
    if name in _SIMPLE:
        return _SIMPLE[name]
    for prefix, make in (("http_", lambda n: _header(n.replace("_", "-"))),
                         ("arg_", _arg), ("cookie_", _cookie)):
        if name.startswith(prefix) and len(name) > len(prefix):
            return make(name[len(prefix):])
    raise ValueError(f"unsupported variable ${name}")


@lru_cache(maxsize=1024)
def compile_template(template: str) -> KeyFunc:
    """nginx text (variables and literals, e.g. "$host$request_uri") -> a function of the
    request. Raises ValueError for a variable we do not know."""
    parts: list[KeyFunc | str] = []
    pos = 0
    for m in VARIABLE.finditer(template):
        if m.start() > pos:
            parts.append(template[pos:m.start()])
        parts.append(_var(m.group(1) or m.group(2)))
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    if len(parts) == 1 and callable(parts[0]):
        return parts[0]
    frozen = tuple(parts)
    return lambda r: "".join(p if isinstance(p, str) else p(r) for p in frozen)


def expand(template: str, r: RequestView) -> str:
    """The template's text for this request (a template without `$` is itself)."""
    if "$" not in template:
        return template
    return compile_template(template)(r)


def compile_hash_key(template: str) -> KeyFunc:
    """nginx `upstream-hash-by` text -> its key function; ValueError when it names no
    variable or one we do not know (routing rejects the annotation then)."""
    if not names(template):
        raise ValueError(f"upstream-hash-by {template!r} names no variable")
    return compile_template(template)
