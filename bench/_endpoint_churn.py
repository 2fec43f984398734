"""What one EndpointSlice change costs the gateway's event loop in a fleet of N Services of M
endpoints each (one member cluster, every Service routed by an Ingress): the time the
upstream part spends on each change it is told of (`UpstreamManager._on_services`).

    python bench/_endpoint_churn.py --services 2000 --endpoints 10

A diagnostic, not a comparison: bench/README.md has its figures before and after 9e1d4c1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fleetkit import endpoint, service, source_slice  # noqa: E402

from gateway.app import GatewayApp  # noqa: E402
from mcs_controller.access.embedded import EmbeddedCluster  # noqa: E402
from mcs_controller.access.resources import (  # noqa: E402
    ENDPOINT_SLICES,
    INGRESSES,
    NAMESPACES,
    SERVICES,
)


def pods(i: int, m: int, generation: int = 0) -> list[dict]:
    return [endpoint(f"10.{100 * generation + i // 250}.{i % 250}.{j + 1}") for j in range(m)]


async def measure(services: int, endpoints: int, changes: int) -> float:
    hub, member = EmbeddedCluster("hub"), EmbeddedCluster("east", service_cidr="10.250.0.0/16")
    for cluster in (hub, member):
        await cluster.create(NAMESPACES, {"metadata": {"name": "demo"}})
    for i in range(services):
        await member.create(SERVICES, service(f"svc{i}", "demo"))
        await member.create(ENDPOINT_SLICES, source_slice(f"svc{i}", "demo", pods(i, endpoints)))
        await hub.create(INGRESSES, {"metadata": {"name": f"web-{i}", "namespace": "demo"}, "spec": {
            "ingressClassName": "amcs", "rules": [{"host": f"h{i}.example.com", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": f"svc{i}", "port": {"number": 80}}}}]}}]}})
    app = GatewayApp(hub, {"east": member}, listen=("127.0.0.1", 0), admin=None)
    await app.start()
    await app.wait_ready(120)
    upstream, spent = app.upstream, []
    handle = upstream._on_services

    def timed(dirty: set) -> None:
        start = time.perf_counter()
        handle(dirty)
        spent.append(time.perf_counter() - start)

    upstream.catalog.on_change = timed
    for k in range(changes):  # each Service's pods replaced, one Service at a time
        await member.patch(ENDPOINT_SLICES, "demo", f"svc{k}-abcde",
                           {"endpoints": pods(k, endpoints, generation=1)})
        await asyncio.sleep(0.02)
    await app.stop(0.1)
    return sum(spent) / max(1, len(spent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, default=2000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--changes", type=int, default=20)
    args = p.parse_args(argv)
    each = asyncio.run(measure(args.services, args.endpoints, args.changes))
    print(f"{args.services} Services x {args.endpoints} endpoints: {each * 1000:.2f} ms a slice change")
    return 0


if __name__ == "__main__":
    sys.exit(main())
