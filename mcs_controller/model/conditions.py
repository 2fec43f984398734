"""metav1.Condition lists: desired conditions merged onto observed ones."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""


def merge_conditions(
    observed: list[dict] | None, desired: list[Condition], now: str, generation: int | None
) -> list[dict]:
    """The condition list to write: lastTransitionTime moves only when the status changes.

    Types not in `desired` are kept as they were (someone else may own them).
    """
    by_type = {c.get("type"): c for c in observed or []}
    out: list[dict] = []
    for cond in desired:
        old = by_type.pop(cond.type, None)
        changed = old is None or old.get("status") != cond.status
        entry = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    out.extend(by_type.values())
    return out


def same_conditions(observed: list[dict] | None, merged: list[dict]) -> bool:
    return list(observed or []) == merged
