"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902) on plain objects."""

from __future__ import annotations

import copy
from typing import Any

from mcs_controller.access.errors import Invalid


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise Invalid(f"json patch: path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as exc:
            raise Invalid(f"json patch: path {path!r} does not exist") from exc
    return node, parts[-1]


def json_patch(doc: Any, ops: list[dict]) -> Any:
    """RFC 6902 add/remove/replace/test/move/copy; the whole patch applies or none of it."""
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise Invalid("json patch: body must be a list of operations")
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        parts = _pointer(path)
        if kind == "test":
            if _get(doc, parts, path) != op.get("value"):
                raise Invalid(f"json patch: test failed at {path!r}")
            continue
        if kind in ("move", "copy"):
            value = copy.deepcopy(_get(doc, _pointer(op.get("from", "")), op.get("from", "")))
            if kind == "move":
                doc = _remove(doc, _pointer(op["from"]), op["from"])
            doc = _add(doc, parts, path, value)
        elif kind == "add":
            doc = _add(doc, parts, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, parts, path)
        elif kind == "replace":
            doc = _remove(doc, parts, path)
            doc = _add(doc, parts, path, copy.deepcopy(op.get("value")))
        else:
            raise Invalid(f"json patch: unknown op {kind!r}")
    return doc


def _get(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise Invalid(f"json patch: path {path!r} does not exist") from exc
    return node


def _add(doc: Any, parts: list[str], path: str, value: Any) -> Any:
    if not parts:
        return value
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise Invalid(f"json patch: index out of range at {path!r}")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise Invalid(f"json patch: cannot add at {path!r}")
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    parent, last = _parent(doc, parts, path)
    try:
        if isinstance(parent, list):
            parent.pop(int(last))
        else:
            del parent[last]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise Invalid(f"json patch: path {path!r} does not exist") from exc
    return doc
