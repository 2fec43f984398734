"""Kubernetes label selectors: the string form (`a=b,c!=d,e in (x,y),!f`) and matchLabels."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Labels = Mapping[str, str]
Requirement = Callable[[Labels], bool]

_SET_EXPR = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_EXPR = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


class SelectorError(ValueError):
    pass


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside a `( ... )` value set."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(selector):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(selector[start:i])
            start = i + 1
    parts.append(selector[start:])
    return [p for p in parts if p.strip()]


def _requirement(expr: str) -> Requirement:
    if m := _SET_EXPR.match(expr):
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ_EXPR.match(expr):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS.match(expr):
        negate, key = m.groups()
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise SelectorError(f"invalid label selector term {expr.strip()!r}")


def parse(selector: str | None) -> Callable[[Labels], bool]:
    """A predicate over a label map; an empty or None selector matches everything."""
    if not selector or not selector.strip():
        return lambda labels: True
    reqs = [_requirement(part) for part in _split(selector)]
    return lambda labels: all(req(labels) for req in reqs)


def from_match_labels(match_labels: Mapping[str, str]) -> str:
    """The string form of a `matchLabels` map (sorted, so equal maps give equal strings)."""
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


def matches(selector_map: Mapping[str, str] | None, labels: Labels | None) -> bool:
    """A Service-style selector map: every key must be present with that value."""
    if not selector_map:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector_map.items())
