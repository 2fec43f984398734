"""What a Prometheus scrape of the gateway costs in a big fleet: the per-route families (18
series per route and serving cluster) dominate it.

For each size, GatewayMetrics is filled with that many routes served by two clusters and
/metrics is fetched once (OpenMetrics, as Prometheus asks) from an admin server, while a
1 ms ticker on the event loop measures how late it ran. Ours: the families written by
`GatewayMetrics.render`, the scrape encoded in a worker thread (gateway/app.py's admin
server). The peer, measured in the same run: the naive way, the same counts as
prometheus_client families, encoded on the event loop.

    python bench/gateway_scrape.py                   # 500 and 5000 routes
    python bench/gateway_scrape.py --routes 2000 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)
sys.path.append(str(ROOT / "tests"))  # gwkit: the naive peer's families, as the tests check them

import aiohttp  # noqa: E402
from _loop_stalls import LoopStalls, sizes  # noqa: E402
from gwkit import LibraryFamilies  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from gateway.app import SWITCH_INTERVAL  # noqa: E402
from gateway.metrics import GatewayMetrics  # noqa: E402
from mcs_controller.ops.admin import AdminServer  # noqa: E402

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


async def measure(routes: int, naive: bool) -> dict:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    for i in range(routes):
        for cluster in ("east", "west"):
            metrics.observe(f"demo/web-{i}|h{i}.example.com/", cluster, 200, 0.001 * (i % 7))
    if naive:
        registry.register(LibraryFamilies(metrics))
        server = AdminServer("127.0.0.1", 0, registry, ready=lambda: True)
    else:
        server = AdminServer("127.0.0.1", 0, registry, ready=lambda: True, encode_aside=True,
                             render=metrics.render)
    await server.start()
    try:
        async with LoopStalls() as stalls:
            cpu, start = time.process_time(), time.perf_counter()
            async with aiohttp.ClientSession() as s, s.get(f"{server.url}/metrics",
                                                           headers={"Accept": OPENMETRICS}) as r:
                body = await r.read()
                assert r.status == 200, r.status
            took, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        await server.stop()
    return {"routes": routes, "scrape": "naive" if naive else "ours", "bytes": len(body),
            "scrape_ms": round(took * 1000, 1), "cpu_ms": round(cpu * 1000, 1),
            "stall_max_ms": stalls.max_ms}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--routes", type=sizes, default="500,5000", help="routes (comma separated)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL)  # as the gateway runs
    results = []
    print(f"{'routes':>6}  {'scrape':<6} {'MB':>6} {'scrape ms':>9} {'CPU ms':>8} {'stall max ms':>12}")
    for size in args.routes:
        for naive in (False, True):
            r = asyncio.run(measure(size, naive))
            results.append(r)
            print(f"{size:>6}  {r['scrape']:<6} {r['bytes'] / 1e6:>6.1f} {r['scrape_ms']:>9.1f} "
                  f"{r['cpu_ms']:>8.1f} {r['stall_max_ms']:>12.2f}", flush=True)
        ours, naive_run = results[-2], results[-1]
        print(f"{size:>6}  CPU a scrape: ours {ours['cpu_ms']:.0f} ms, naive {naive_run['cpu_ms']:.0f} ms "
              f"({naive_run['cpu_ms'] / max(ours['cpu_ms'], 0.1):.0f}x); longest loop stall "
              f"{ours['stall_max_ms']:.1f} against {naive_run['stall_max_ms']:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps({"runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
