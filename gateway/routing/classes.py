"""Which Ingresses are ours (issue item 1; digest D3).

Order, as ingress-nginx checks it: `spec.ingressClassName` decides when set; else the
deprecated `kubernetes.io/ingress.class` annotation; else (no class at all) the Ingress is
ours only when an IngressClass with our controller is marked as the cluster default, or
when the caller opts in to class-less Ingresses (ingress-nginx --watch-ingress-without-class).
"""

from __future__ import annotations

from collections.abc import Iterable

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
