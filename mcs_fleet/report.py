"""What `up` shows: per cluster, the ServiceImports, shadow Services and imported slices."""

from __future__ import annotations

from mcs_controller.access.loader import Fleet
from mcs_controller.access.resources import ENDPOINT_SLICES, SERVICE_IMPORTS, SERVICES
from mcs_controller.model import labels as L


def _ready(ep: dict) -> bool:
    return (ep.get("conditions") or {}).get("ready") is not False


async def fleet_report(fleet: Fleet) -> str:
    """A plain-text table of everything the controller wrote, cluster by cluster."""
    lines: list[str] = []
    ours = f"{L.LABEL_OWNED_BY}={L.OWNED_BY_VALUE}"
    for name in fleet.members:
        cluster = fleet.clusters[name]
        lines.append(f"cluster {name}")
        imports = (await cluster.list(SERVICE_IMPORTS, label_selector=ours)).items
        shadows = (await cluster.list(SERVICES, label_selector=ours)).items
        slices = (await cluster.list(ENDPOINT_SLICES, label_selector=ours)).items
        if not (imports or shadows or slices):
            lines.append("  (nothing imported)")
        for imp in imports:
            meta, spec = imp["metadata"], imp["spec"]
            from_ = ",".join(c["cluster"] for c in (imp.get("status") or {}).get("clusters") or [])
            lines.append(
                f"  ServiceImport  {meta['namespace']}/{meta['name']}  type={spec['type']}"
                f"  ips={','.join(spec.get('ips') or []) or '-'}  from={from_ or '-'}"
            )
        for svc in shadows:
            meta, spec = svc["metadata"], svc["spec"]
            lines.append(f"  Service        {meta['namespace']}/{meta['name']}  clusterIP={spec.get('clusterIP')}")
        for s in slices:
            meta = s["metadata"]
            labels = meta.get("labels") or {}
            eps = s.get("endpoints") or []
            addrs = ",".join(
                (ep.get("hostname") + "=" if ep.get("hostname") else "") + ep["addresses"][0]
                + ("" if _ready(ep) else "(not ready)")
                for ep in eps
            )
            lines.append(
                f"  EndpointSlice  {meta['namespace']}/{meta['name']}"
                f"  service={labels.get(L.LABEL_SERVICE_NAME)}"
                f"  source={labels.get(L.LABEL_SOURCE_CLUSTER)}  endpoints=[{addrs}]"
            )
    return "\n".join(lines)


async def access_report(app) -> str:
    """Where each component listens, and one command to try against it."""
    fleet = app.fleet
    lines = [f"controller admin: http://127.0.0.1:{app.controller.admin.bound_port}/metrics"
             "  (/healthz, /readyz)"]
    if app.dns:
        lines.append("clusterset DNS, one per cluster (CoreDNS there would forward clusterset.local to it):")
        examples = await _example_names(fleet)
        for name, dns in app.dns.items():
            host, port = dns.address
            port_flag = "" if port == 53 else f" -p {port}"
            lines.append(f"  {name:<20} {host}:{port}   try: dig @{host}{port_flag} {examples[0]} +short")
        for extra in examples[1:]:
            lines.append(f"  {'':<20} {'':<{len(host) + len(str(port)) + 1}}   also: {extra}")
    if app.gateway is not None:
        host, port = app.gateway.address
        lines.append(f"gateway: http://{host}:{port}   routes: http://{host}:{app.gateway.admin_port}/routes")
        tls = app.gateway.address_tls
        for rule_host in _gateway_hosts(app.gateway):
            lines.append(f"  try: curl -H 'Host: {rule_host}' http://{host}:{port}/")
            if tls is not None:  # SNI names the host; the default certificate is self-signed
                lines.append(f"       curl -k --resolve {rule_host}:{tls[1]}:{tls[0]} "
                             f"https://{rule_host}:{tls[1]}/")
    return "\n".join(lines)


async def _example_names(fleet: Fleet) -> list[str]:
    """A ClusterSetIP name first, then a headless pod name (ACK One form), when there are any."""
    names: list[str] = []
    for name in fleet.members:
        cluster = fleet.clusters[name]
        for imp in sorted((await cluster.list(SERVICE_IMPORTS)).items,
                          key=lambda o: o["spec"]["type"] != "ClusterSetIP"):
            meta = imp["metadata"]
            svc = f"{meta['name']}.{meta['namespace']}.svc.clusterset.local"
            if imp["spec"]["type"] == "Headless":
                slices = (await cluster.list(
                    ENDPOINT_SLICES, meta["namespace"],
                    f"{L.LABEL_MCS_SERVICE_NAME}={meta['name']}")).items
                hosts = [ep["hostname"] for s in slices for ep in s["endpoints"] if ep.get("hostname")]
                svc = f"{sorted(hosts)[0]}.{svc}" if hosts else svc
            if svc not in names:
                names.append(svc)
        if names:
            return names[:2]
    return ["<svc>.<ns>.svc.clusterset.local"]


def _gateway_hosts(gateway) -> list[str]:
    hosts: list[str] = []
    for route in gateway.table.describe():
        host = route.get("host") or ""
        if host and "*" not in host and host not in hosts:
            hosts.append(host)
    return hosts
