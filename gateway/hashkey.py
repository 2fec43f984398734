"""nginx `upstream-hash-by` keys: the variable grammar, for routing (validation) and upstream (hashing).

Pure and import-light, so the routing part can validate an annotation with exactly the
grammar the balancer later computes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

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


def _cookie(name: str) -> KeyFunc:
    def get(r: RequestView) -> str:
        for part in r.headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k.lower() == name:
                return v
        return ""
    return get


def _header(name: str) -> KeyFunc:
    return lambda r: r.headers.get(name, "")


_SIMPLE: dict[str, KeyFunc] = {
    "request_uri": lambda r: r.path,
    "uri": lambda r: r.path.partition("?")[0],
    "args": _query,
    "query_string": _query,
    "host": lambda r: r.host,
    "remote_addr": lambda r: r.client_ip,
    "binary_remote_addr": lambda r: r.client_ip,
    "request_method": lambda r: r.method,
}

#: An nginx variable reference: `$name` or `${name}`.
VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
#: Variables computed directly; the prefixed families follow.
SIMPLE_NAMES = frozenset(_SIMPLE)
PREFIXES = ("http_", "arg_", "cookie_")


def known(name: str) -> bool:
    """Can a key function compute `$name`?"""
    lower = name.lower()
    return lower in _SIMPLE or any(lower.startswith(p) and len(lower) > len(p) for p in PREFIXES)


def _var(name: str) -> KeyFunc:
    name = name.lower()
    if name in _SIMPLE:
        return _SIMPLE[name]
    for prefix, make in (("http_", lambda n: _header(n.replace("_", "-"))),
                         ("arg_", _arg), ("cookie_", _cookie)):
        if name.startswith(prefix) and len(name) > len(prefix):
            return make(name[len(prefix):])
    raise ValueError(f"unsupported variable ${name} in upstream-hash-by")


@lru_cache(maxsize=256)
def compile_hash_key(template: str) -> KeyFunc:
    """nginx `upstream-hash-by` text (variables and literals, e.g. "$host$request_uri") -> a key function.

    Raises ValueError for a variable we do not know, so routing can reject the annotation.
    """
    parts: list[KeyFunc | str] = []
    pos = 0
    for m in VARIABLE.finditer(template):
        if m.start() > pos:
            parts.append(template[pos:m.start()])
        parts.append(_var(m.group(1) or m.group(2)))
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    if not any(callable(p) for p in parts):
        raise ValueError(f"upstream-hash-by {template!r} names no variable")
    if len(parts) == 1:
        return parts[0]  # type: ignore[return-value]
    frozen = tuple(parts)
    return lambda r: "".join(p if isinstance(p, str) else p(r) for p in frozen)
