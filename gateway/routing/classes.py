"""Which Ingresses are ours (issue item 1; digest D3).

Order, as ingress-nginx checks it: `spec.ingressClassName` decides when set; else the
deprecated `kubernetes.io/ingress.class` annotation; else (no class at all) the Ingress is
ours only when an IngressClass with our controller is marked as the cluster default, or
when the caller opts in to class-less Ingresses (ingress-nginx --watch-ingress-without-class).
"""

from __future__ import annotations

from collections.abc import Iterable

from .values import Problem

LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"


class ClassFilter:
    def __init__(self, ingress_classes: Iterable[dict], class_name: str, controller: str,
                 accept_classless: bool = False):
        self.class_name = class_name
        self.ours: set[str] = {class_name}
        self.default_is_ours = accept_classless
        for ic in ingress_classes:
            meta = ic.get("metadata") or {}
            name = meta.get("name")
            if not name or (ic.get("spec") or {}).get("controller") != controller:
                continue
            self.ours.add(name)
            if (meta.get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true":
                self.default_is_ours = True

    def is_ours(self, ingress: dict) -> bool:
        name = (ingress.get("spec") or {}).get("ingressClassName")
        if name:
            return name in self.ours
        legacy = ((ingress.get("metadata") or {}).get("annotations") or {}).get(
            LEGACY_CLASS_ANNOTATION)
        if legacy:
            return legacy == self.class_name or legacy in self.ours
        return self.default_is_ours


def ingress_age(ing: dict) -> tuple[str, str, str]:
    """The order Ingresses are processed in: creationTimestamp, then namespace/name (as
    ingress-nginx sorts them), so the oldest Ingress wins every conflict."""
    meta = ing.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    return (str(meta.get("creationTimestamp") or "~"), str(meta.get("namespace") or ""),
            str(meta.get("name") or ""))


def ingress_key(ing: dict) -> str:
    """"namespace/name", as problems name an Ingress."""
    _, ns, name = ingress_age(ing)
    return f"{ns or 'default'}/{name or '?'}"


def select_ingresses(
    ingresses: Iterable[dict],
    ingress_classes: list[dict],
    *,
    class_name: str = "amcs",
    controller: str = "amcs.dev/gateway",
    accept_classless: bool = False,
) -> tuple[list[tuple[str, dict]], list[Problem]]:
    """Our Ingresses as (key, object), oldest first, and why any could not be judged.

    The one place that decides which Ingresses this gateway serves: the route table and
    the TLS certificate store (gateway/tls.py) both read its answer.
    """
    problems: list[Problem] = []
    try:
        classes = ClassFilter(ingress_classes or [], class_name, controller, accept_classless)
    except Exception as exc:  # malformed IngressClass list: fall back to the class name only
        problems.append(Problem("-", None, f"IngressClasses unreadable ({exc!r})"))
        classes = ClassFilter([], class_name, controller, accept_classless)
    ours: list[tuple[str, dict]] = []
    for ing in sorted((i for i in ingresses if isinstance(i, dict)), key=ingress_age):
        key = ingress_key(ing)
        try:
            if classes.is_ours(ing):
                ours.append((key, ing))
        except Exception as exc:  # item 6: one bad object never takes the gateway down
            problems.append(Problem(key, None, f"unreadable ({exc!r}); ignored"))
    return ours, problems
