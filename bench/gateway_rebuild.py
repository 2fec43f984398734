"""What an Ingress change costs the gateway's data path in a big hub: the route table is
rebuilt from every Ingress, and the event loop must keep serving meanwhile.

For each fleet size, one Ingress is created in a hub that already has N (one rule and one
backend Service each) and we measure how long until the new table serves, and the event
loop's stalls meanwhile (a 1 ms ticker on the loop: its longest and p99 lateness). Three
builds, in the same run:

  ours       in a thread of its own (gateway/app.py `_rebuild_aside`), parsing only the
             Ingresses that changed (gateway/routing/reuse.py)
  parse-all  in the thread, parsing every Ingress (ours before the parse cache)
  naive      on the event loop, parsing every Ingress: the peer

Figures are wall-clock on a shared machine: run alone.

    python bench/gateway_rebuild.py                    # 500, 2000 and 5000 Ingresses
    python bench/gateway_rebuild.py --sizes 1000 --rounds 3 --json out.json
    python bench/gateway_rebuild.py --tls              # with the HTTPS listener
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from _loop_stalls import LoopStalls, sizes  # noqa: E402

from gateway.app import GatewayApp  # noqa: E402
from mcs_controller.access.embedded import EmbeddedCluster  # noqa: E402
from mcs_controller.access.resources import INGRESSES, NAMESPACES  # noqa: E402


def ingress(i: int) -> dict:
    return {"metadata": {"name": f"web-{i}", "namespace": "demo"},
            "spec": {"ingressClassName": "amcs", "rules": [{
                "host": f"h{i}.example.com", "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": f"svc{i}", "port": {"number": 80}}}}]}}]}}


BUILDS = ("ours", "parse-all", "naive")


async def measure(size: int, build: str, tls: bool = False) -> dict:
    hub, member = EmbeddedCluster("hub"), EmbeddedCluster("east", service_cidr="10.90.0.0/16")
    for cluster in (hub, member):
        await cluster.create(NAMESPACES, {"metadata": {"name": "demo"}})
    for i in range(size):
        await hub.create(INGRESSES, ingress(i))
    app = GatewayApp(hub, {"east": member}, listen=("127.0.0.1", 0), admin=None,
                     listen_tls=("127.0.0.1", 0) if tls else None)
    if build != "ours":  # every Ingress parsed by every build
        app.build_options = replace(app.build_options, reuse=None)
    if build == "naive":  # and the build run on the event loop
        app._rebuild_aside = app.rebuild  # type: ignore[method-assign]
    await app.start()
    await app.wait_ready(120)
    async with LoopStalls() as stalls:
        old = app.table
        start = time.perf_counter()
        await hub.create(INGRESSES, ingress(size))
        while app.table is old and time.perf_counter() - start < 60:  # noqa: ASYNC110 (polled)
            await asyncio.sleep(0.002)
        applied = time.perf_counter() - start
        await asyncio.sleep(0.1)
    await app.stop(0.1)
    return {"ingresses": size, "build": build,
            "applied": app.table is not old, "applied_ms": round(applied * 1000, 1),
            "stall_max_ms": stalls.max_ms, "stall_p99_ms": stalls.p99_ms,
            "ticks": stalls.ticks}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=sizes, default="500,2000,5000",
                   help="Ingresses in the hub (comma separated)")
    p.add_argument("--rounds", type=int, default=1, help="best (lowest longest stall) of N")
    p.add_argument("--tls", action="store_true",
                   help="with the HTTPS listener (each build also recomputes the certificates)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results = []
    print(f"{'ingresses':>9}  {'build':<9} {'applied ms':>10} {'stall max ms':>12} {'stall p99 ms':>12}")
    for size in args.sizes:
        for build in BUILDS:
            runs = [asyncio.run(measure(size, build, args.tls)) for _ in range(max(1, args.rounds))]
            best = min(runs, key=lambda r: r["stall_max_ms"])
            results.append(best)
            print(f"{size:>9}  {best['build']:<9} {best['applied_ms']:>10.1f} "
                  f"{best['stall_max_ms']:>12.2f} {best['stall_p99_ms']:>12.2f}", flush=True)
        ours, naive = results[-3], results[-1]
        print(f"{size:>9}  longest stall: ours {ours['stall_max_ms']:.1f} ms, naive "
              f"{naive['stall_max_ms']:.1f} ms ({naive['stall_max_ms'] / max(ours['stall_max_ms'], 0.01):.0f}x); "
              f"applied: ours {ours['applied_ms']:.0f} ms, naive {naive['applied_ms']:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
