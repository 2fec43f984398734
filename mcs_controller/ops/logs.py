"""Structured logging: JSON lines for machines, k=v text for people.

Every record carries ts (RFC3339, UTC), level, logger and msg, plus whatever the
caller passed as `extra={...}` (cluster, namespace, key ...), so log pipelines can
filter on them without parsing messages. The stdlib refuses extra keys that clash
with LogRecord attributes (`name`, `msg`, `module` ...): pass those through `kv()`,
e.g. `log.info("mirrored", extra=kv(cluster="c1", namespace="ns", name="svc1"))`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

#: Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

#: Marks the handler we install so a second setup_logging() replaces it, not adds one.
_HANDLER_FLAG = "_mcs_ops_handler"


def _timestamp(record: logging.LogRecord) -> str:
    """RFC3339 UTC with milliseconds, e.g. 2026-11-23T18:00:00.123Z."""
    dt = datetime.fromtimestamp(record.created, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


#: The record attribute `kv()` puts its fields under.
KV_ATTR = "kv"


def kv(**fields: Any) -> dict[str, Any]:
    """`extra=` for any field names, including ones LogRecord reserves (name, module ...)."""
    return {KV_ATTR: fields}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields the caller attached with `extra=` (those given via kv() flattened)."""
    out: dict[str, Any] = {}
    for k, v in vars(record).items():
        if k in _STANDARD_ATTRS or k.startswith("_"):
            continue
        if k == KV_ATTR and isinstance(v, dict):
            out.update(v)
        else:
            out[k] = v
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line; non-JSON values are rendered with str()."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in extra_fields(record).items():
            if k not in out:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _text_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    if s == "" or any(c in s for c in ' "=\t\n'):
        return json.dumps(s)
    return s


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger: msg k=v ...`, the same fields as JSON, readable in a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record),
            f"{record.levelname:<7}",
            f"{record.name}:",
            record.getMessage(),
        ]
        parts += [f"{k}={_text_value(v)}" for k, v in extra_fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def parse_level(level: str | int) -> int:
    """'info', 'WARN', 20 ... -> a logging level; ValueError on nonsense."""
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}") from None


def setup_logging(
    level: str | int = "info",
    fmt: Literal["json", "text"] = "json",
    *,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Configure the root logger; calling again replaces the previous setup (idempotent)."""
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r}; use 'json' or 'text'")
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_FLAG, False):
            root.removeHandler(h)
            h.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _HANDLER_FLAG, True)
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    # Probes hit /healthz every few seconds: keep aiohttp's access log out of ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
