"""ServiceImports + imported EndpointSlices -> the DNS-relevant facts of each service.

Pure: no I/O and no clock (the SOA serial is passed in by the caller). The catalog is
updated object by object from informer events and recomputes only the service an event
touches, returning its key so the answer cache can drop exactly that service's names.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mcs_controller.model import labels as L

#: (namespace, service name), both lower-case.
ServiceKey = tuple[str, str]


@dataclass(frozen=True, slots=True, order=True)
class Port:
    name: str  # lower-case; "" when unnamed (no SRV record for it)
    protocol: str  # lower-case: tcp, udp, sctp
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ready address of a Headless import, as DNS names it."""

    hostname: str  # the endpoint's hostname, else its IP with '.'/':' replaced by '-'
    cluster: tuple[str, ...]  # the source cluster id as DNS labels (one or two), () if unknown
    address: str  # canonical text form
    v6: bool
    ports: tuple[Port, ...]  # the slice's ports (headless SRV uses the endpoint ports)


@dataclass(frozen=True, slots=True)
class ServiceRecords:
    """What the zone needs to answer for `<name>.<namespace>.svc.<zone>`."""

    namespace: str
    name: str
    headless: bool
    ports: tuple[Port, ...]  # the ServiceImport's ports (ClusterSetIP SRV)
    ips4: tuple[str, ...]  # ClusterSetIP: VIPs; Headless: ready endpoint addresses, deduplicated
    ips6: tuple[str, ...]
    endpoints: tuple[Endpoint, ...] = ()  # Headless only: ready endpoints, sorted

    @property
    def exists(self) -> bool:
        """A Headless import without a ready endpoint has no name at all (spec: NXDOMAIN)."""
        return not self.headless or bool(self.endpoints)


def dashed(address: str) -> str:
    """The hostname of an endpoint without one: `10.1.2.3` -> `10-1-2-3`, `fd00::1` -> `fd00--1`."""
    return address.replace(".", "-").replace(":", "-")


def _ip(text: object, v6: bool | None = None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an address; None when it is not one (or not of the wanted family)."""
    if not isinstance(text, str):
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if v6 is not None and (ip.version == 6) != v6:
        return None
    return ip


def _ports(raw: object) -> tuple[Port, ...]:
    out: list[Port] = []
    for p in raw if isinstance(raw, list) else []:
        if not isinstance(p, dict):
            continue
        number = p.get("port")
        if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
            continue
        name = p.get("name") or ""
        out.append(Port(str(name).lower(), str(p.get("protocol") or "TCP").lower(), number))
    return tuple(out)


def _sorted_ips(ips: list) -> tuple[str, ...]:
    """Deduplicated, numerically sorted: a stable answer order, so caches and tests agree."""
    return tuple(str(ip) for ip in sorted(set(ips)))


def _ready(ep: dict) -> bool:
    """`conditions.ready` unset counts as ready (EndpointSlice API, CoreDNS, conformance)."""
    ready = (ep.get("conditions") or {}).get("ready")
    return ready is None or bool(ready)


def _slice_endpoints(sl: dict) -> list[Endpoint]:
    """The ready endpoints of one imported slice (FQDN slices and bad addresses skipped)."""
    family = sl.get("addressType")
    if family not in ("IPv4", "IPv6"):
        return []
    v6 = family == "IPv6"
    labels = (sl.get("metadata") or {}).get("labels") or {}
    cluster_id = str(labels.get(L.LABEL_SOURCE_CLUSTER) or "").lower().strip(".")
    cluster = tuple(cluster_id.split(".")) if cluster_id else ()
    ports = _ports(sl.get("ports"))
    out: list[Endpoint] = []
    for ep in sl.get("endpoints") or []:
        if not isinstance(ep, dict) or not _ready(ep):
            continue
        hostname = ep.get("hostname")
        for raw in ep.get("addresses") or []:
            ip = _ip(raw, v6)
            if ip is None:
                continue
            text = str(ip)
            host = str(hostname).lower() if hostname else dashed(text)
            out.append(Endpoint(host, cluster, text, v6, ports))
    return out


def _import_facts(imp: dict) -> tuple:
    """What of a ServiceImport DNS reads (anything else changing changes no answer)."""
    spec = imp.get("spec") or {}
    return (spec.get("type") == "Headless", _ports(spec.get("ports")), tuple(spec.get("ips") or ()))


def _endpoint_order(e: Endpoint) -> tuple:
    return (e.cluster, e.hostname, e.v6, ipaddress.ip_address(e.address), e.ports)


def records_from(ns: str, name: str, facts: tuple, endpoints: list[Endpoint]) -> ServiceRecords:
    """One service's DNS facts from its import's facts and its slices' ready endpoints."""
    headless, ports, raw_ips = facts
    if not headless:
        ips = [ip for ip in (_ip(t) for t in raw_ips) if ip is not None]
        return ServiceRecords(
            ns, name, False, ports,
            _sorted_ips([ip for ip in ips if ip.version == 4]),
            _sorted_ips([ip for ip in ips if ip.version == 6]),
        )
    eps = sorted(set(endpoints), key=_endpoint_order)
    return ServiceRecords(
        ns, name, True, ports,
        _sorted_ips([ipaddress.ip_address(e.address) for e in eps if not e.v6]),
        _sorted_ips([ipaddress.ip_address(e.address) for e in eps if e.v6]),
        tuple(eps),
    )


def build_records(imp: dict, slices: list[dict]) -> ServiceRecords:
    """One service's DNS facts from its ServiceImport and its imported slices."""
    ns, name = _key_of(imp)
    return records_from(ns, name, _import_facts(imp), [e for sl in slices for e in _slice_endpoints(sl)])


def _key_of(obj: dict) -> ServiceKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or "").lower(), str(meta.get("name") or "").lower())


def slice_service_key(obj: dict) -> ServiceKey | None:
    """The service an imported slice belongs to (its MCS service-name label), or None."""
    meta = obj.get("metadata") or {}
    svc = (meta.get("labels") or {}).get(L.LABEL_MCS_SERVICE_NAME)
    if not svc:
        return None
    return (str(meta.get("namespace") or "").lower(), str(svc).lower())


@dataclass
class Catalog:
    """Every imported service of one cluster, kept current one object at a time.

    Events store what DNS reads (import facts, each slice's ready endpoints) and report
    the services whose answers may have changed; a service's records are rebuilt on the
    first lookup after a change, so a burst of slice events (an initial list of a big
    Headless service, a rolling restart) costs one rebuild, not one per event.
    """

    serial: int = 0
    _imports: dict[ServiceKey, tuple] = field(default_factory=dict)  # import facts
    _slices: dict[ServiceKey, dict[str, tuple[Endpoint, ...]]] = field(default_factory=dict)
    _records: dict[ServiceKey, ServiceRecords] = field(default_factory=dict)
    _namespaces: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading (the zone's view)

    def service(self, namespace: str, name: str) -> ServiceRecords | None:
        key = (namespace, name)
        rec = self._records.get(key)
        if rec is None:
            facts = self._imports.get(key)
            if facts is None:
                return None
            eps = [e for group in self._slices.get(key, {}).values() for e in group]
            rec = self._records[key] = records_from(namespace, name, facts, eps)
        return rec

    def has_namespace(self, namespace: str) -> bool:
        """True while some ServiceImport lives in the namespace (imports exist only where it does)."""
        return namespace in self._namespaces

    @property
    def service_count(self) -> int:
        return len(self._imports)

    @property
    def endpoint_count(self) -> int:
        """Ready endpoint addresses in the imported slices of Headless imports."""
        return sum(
            len(group)
            for key, groups in self._slices.items()
            if (self._imports.get(key) or (False,))[0]
            for group in groups.values()
        )

    # ------------------------------------------------------------------ writing (informer events)

    def _changed(self, key: ServiceKey, serial: int) -> set[ServiceKey]:
        self._records.pop(key, None)
        self.serial = max(self.serial, serial)
        return {key}

    def set_import(self, obj: dict, serial: int) -> set[ServiceKey]:
        """Store an import; returns {its key} when an answer may change, else an empty set."""
        key = _key_of(obj)
        facts = _import_facts(obj)
        old = self._imports.get(key)
        if old == facts:
            return set()  # a resync or a change DNS does not read
        if old is None:
            self._namespaces[key[0]] = self._namespaces.get(key[0], 0) + 1
        self._imports[key] = facts
        return self._changed(key, serial)

    def delete_import(self, obj: dict, serial: int) -> set[ServiceKey]:
        key = _key_of(obj)
        if self._imports.pop(key, None) is None:
            return set()
        left = self._namespaces.get(key[0], 1) - 1
        if left:
            self._namespaces[key[0]] = left
        else:
            self._namespaces.pop(key[0], None)
        return self._changed(key, serial)

    def set_slice(self, obj: dict, serial: int, old: dict | None = None) -> set[ServiceKey]:
        """Store a slice; returns the services whose answers may change (two if its label moved)."""
        changed: set[ServiceKey] = set()
        key = slice_service_key(obj)
        if old is not None:
            old_key = slice_service_key(old)
            if old_key is not None and old_key != key:
                changed |= self.delete_slice(old, serial)
        if key is None:
            return changed
        eps = tuple(_slice_endpoints(obj))
        groups = self._slices.setdefault(key, {})
        name = _key_of(obj)[1]
        if groups.get(name) == eps:
            return changed
        groups[name] = eps
        if self._headless(key):
            changed |= self._changed(key, serial)
        return changed

    def delete_slice(self, obj: dict, serial: int) -> set[ServiceKey]:
        key = slice_service_key(obj)
        groups = self._slices.get(key) if key is not None else None
        if key is None or groups is None or groups.pop(_key_of(obj)[1], None) is None:
            return set()
        if not groups:
            del self._slices[key]
        return self._changed(key, serial) if self._headless(key) else set()

    def _headless(self, key: ServiceKey) -> bool:
        facts = self._imports.get(key)
        return facts is not None and facts[0]
