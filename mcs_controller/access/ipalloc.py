"""ClusterIP allocation from a cluster's Service CIDR, as the API server does on create."""

from __future__ import annotations

import ipaddress

from mcs_controller.access.api import JSON
from mcs_controller.access.errors import Invalid

_ALLOCATING_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")


class ClusterIPAllocator:
    def __init__(self, cidr: str):
        self.network = ipaddress.ip_network(cidr)
        self.family = "IPv4" if self.network.version == 4 else "IPv6"
        self._used: set[str] = set()
        self._next = 1  # offset of the next address to try (skip the network address)

    def _allocate(self) -> str:
        size = self.network.num_addresses
        for _ in range(size):
            offset = self._next
            self._next = self._next + 1 if self._next + 1 < size - 1 else 1
            ip = str(self.network.network_address + offset)
            if ip not in self._used:
                self._used.add(ip)
                return ip
        raise Invalid(f"spec.clusterIP: the Service CIDR {self.network} is full")

    def assign(self, svc: JSON) -> None:
        """Fill spec.clusterIP(s), ipFamilies and the defaults a new Service gets."""
        spec = svc.setdefault("spec", {})
        svc_type = spec.setdefault("type", "ClusterIP")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            if svc_type != "ExternalName":
                port.setdefault("targetPort", port.get("port"))
        if svc_type not in _ALLOCATING_TYPES:
            return
        spec.setdefault("sessionAffinity", "None")
        requested = spec.get("clusterIP") or ""
        if requested == "None":
            spec["clusterIPs"] = ["None"]
        elif requested:
            try:
                addr = ipaddress.ip_address(requested)
            except ValueError as exc:
                raise Invalid(f"spec.clusterIP: {requested!r} is not an IP address") from exc
            if addr not in self.network:
                raise Invalid(f"spec.clusterIP: {requested} is not in the range {self.network}")
            if requested in self._used:
                raise Invalid(f"spec.clusterIP: {requested} is already allocated")
            self._used.add(requested)
            spec["clusterIPs"] = [requested]
        else:
            spec["clusterIP"] = self._allocate()
            spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", [self.family])
        spec.setdefault("ipFamilyPolicy", "SingleStack")

    def keep(self, old: JSON, new: JSON) -> None:
        """clusterIP is immutable: carry it over, refuse a change."""
        old_spec, new_spec = old.get("spec") or {}, new.setdefault("spec", {})
        for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if field in old_spec and not new_spec.get(field):
                new_spec[field] = old_spec[field]
            elif field in ("clusterIP", "clusterIPs") and new_spec.get(field) != old_spec.get(field):
                raise Invalid(f"spec.{field}: field is immutable")
        for port in new_spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
        new_spec.setdefault("type", old_spec.get("type", "ClusterIP"))
        if new_spec["type"] in _ALLOCATING_TYPES:
            new_spec.setdefault("sessionAffinity", "None")

    def release(self, svc: JSON) -> None:
        for ip in (svc.get("spec") or {}).get("clusterIPs") or []:
            self._used.discard(ip)
