"""Kubernetes time formats."""

from __future__ import annotations

import time


def rfc3339(ts: float) -> str:
    """metav1.Time: RFC 3339 in UTC with whole seconds (creationTimestamp, conditions, events)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
