"""Controller benchmark: endpoint-change propagation latency and memory vs fleet size.

Three embedded clusters; c1 (and, for every fourth Service, c2 too) exports Services whose
source EndpointSlices hold `size` endpoints in all. For each size, in a fresh process:
initial convergence time, then single-endpoint changes (one ready flag flipped in a source
slice), each timed until a watch in every consumer (c1, c2, c3) sees it, and resident
memory. The same run measures a naive peer (no informer cache: full relist per change).

    python bench/controller.py [--sizes 1000,10000,50000] [--changes 200] [--impls ours,naive]
    python bench/controller.py --profile ours:10000      # where the time goes (cProfile)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import math
import pstats
import random
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mcs_controller.access.api import JSON  # noqa: E402
from mcs_controller.access.embedded import EmbeddedCluster  # noqa: E402
from mcs_controller.access.errors import NotFound  # noqa: E402
from mcs_controller.access.resources import (  # noqa: E402
    ENDPOINT_SLICES,
    NAMESPACES,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
)
from mcs_controller.engine.controller import Controller  # noqa: E402
from mcs_controller.model import labels as L  # noqa: E402
from mcs_controller.model.desired import export_slice_labels, import_labels  # noqa: E402
from mcs_controller.model.slices import mirror_slices  # noqa: E402

NS = "bench"
CLUSTERS = ("c1", "c2", "c3")
#: Endpoints per exported Service, cycled (mean 100); a 225 one spans three source slices.
SERVICE_SIZES = (25, 50, 100, 225)
TARGET_P99_MS, TARGET_P99_SIZE = 100.0, 10_000
TARGET_RSS_MB, TARGET_RSS_SIZE = 200.0, 50_000
CHANGE_TIMEOUT = 30.0
PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]


def rss_mb() -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of this process, in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line[:5]] = int(line.split()[1]) / 1024
    return {"rss": out["VmRSS"], "hwm": out["VmHWM"]}


def deep_mb(roots: list[object]) -> float:
    """Bytes reachable from `roots` (each object once), in MB: who holds the memory."""
    seen: set[int] = set()
    stack, total = list(roots), 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | deque):
            stack.extend(obj)
        elif hasattr(obj, "__dataclass_fields__"):  # the store's history entries
            stack.append(vars(obj))
    return total / 2**20


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th)."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))] if s else float("nan")


# -- the fleet ---------------------------------------------------------------------------


@dataclass
class SourceSlice:
    cluster: str
    service: str
    name: str
    ips: list[str]


def shape(size: int) -> list[SourceSlice]:
    """Source slices, at most 100 endpoints each, `size` endpoints in total (see README)."""
    out: list[SourceSlice] = []
    total, i, next_ip = 0, 0, {"c1": 0, "c2": 0}
    while total < size:
        svc = f"svc-{i:05d}"
        clusters = ("c1", "c2") if i % 4 == 1 else ("c1",)
        for cluster in clusters:
            n = min(SERVICE_SIZES[i % len(SERVICE_SIZES)], size - total)
            for j in range(0, n, L.MAX_ENDPOINTS_PER_SLICE):
                ips = []
                for _ in range(min(L.MAX_ENDPOINTS_PER_SLICE, n - j)):
                    k = next_ip[cluster] = next_ip[cluster] + 1
                    ips.append(f"10.{200 + int(cluster[1:])}.{k >> 8}.{k & 255}")
                out.append(SourceSlice(cluster, svc, f"{svc}-{j // 100:x}z{len(out):x}", ips))
            total += n
        i += 1
    return out


def source_slice(s: SourceSlice) -> JSON:
    """As the built-in EndpointSlice controller writes it."""
    return {
        "metadata": {"name": s.name, "namespace": NS, "labels": {
            L.LABEL_SERVICE_NAME: s.service, L.LABEL_MANAGED_BY: L.BUILTIN_SLICE_CONTROLLER}},
        "addressType": "IPv4",
        "ports": PORTS,
        "endpoints": [{
            "addresses": [ip],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": f"node-{k % 50}", "zone": f"zone-{k % 3}",
            "targetRef": {"kind": "Pod", "namespace": NS, "name": f"{s.service}-{k}",
                          "uid": f"{s.name}-{k:04d}"},
        } for k, ip in enumerate(s.ips)],
    }


async def build_fleet(slices: list[SourceSlice]) -> tuple[dict[str, EmbeddedCluster], EmbeddedCluster]:
    clusters = {n: EmbeddedCluster(n, f"10.{10 + i}.0.0/16", bookmark_interval=0)
                for i, n in enumerate(CLUSTERS)}
    hub = EmbeddedCluster("hub", "10.9.0.0/16", bookmark_interval=0)
    for c in (*clusters.values(), hub):
        await c.create(NAMESPACES, {"metadata": {"name": NS}})
    exported: set[tuple[str, str]] = set()
    for s in slices:
        c = clusters[s.cluster]
        if (s.cluster, s.service) not in exported:
            exported.add((s.cluster, s.service))
            await c.create(SERVICES, {"metadata": {"name": s.service, "namespace": NS}, "spec": {
                "selector": {"app": s.service},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
            await c.create(SERVICE_EXPORTS, {"metadata": {"name": s.service, "namespace": NS}})
        await c.create(ENDPOINT_SLICES, source_slice(s))
    return clusters, hub


# -- what consumers see -----------------------------------------------------------------


class Probe:
    """A watch on imported EndpointSlices in every consumer: counts, and awaited changes."""

    def __init__(self, clusters: dict[str, EmbeddedCluster], size: int):
        self.size = size
        self.totals = dict.fromkeys(clusters, 0)
        self._counts: dict[str, dict[str, int]] = {c: {} for c in clusters}
        self.converged = asyncio.Event()
        self.expect: tuple[str, str, bool] | None = None  # (service, ip, ready)
        self.seen: dict[str, float] = {}
        self.all_seen = asyncio.Event()
        self._tasks = [asyncio.create_task(self._watch(n, c)) for n, c in clusters.items()]

    async def _watch(self, name: str, client: EmbeddedCluster) -> None:
        ours = f"{L.LABEL_OWNED_BY}={L.OWNED_BY_VALUE}"
        async for ev in client.watch(ENDPOINT_SLICES, NS, label_selector=ours):
            now = time.perf_counter()
            obj, counts = ev.object, self._counts[name]
            n = 0 if ev.type == "DELETED" else len(obj.get("endpoints") or [])
            self.totals[name] += n - counts.get(obj["metadata"]["name"], 0)
            counts[obj["metadata"]["name"]] = n
            if all(t == self.size for t in self.totals.values()):
                self.converged.set()
            exp = self.expect
            if exp is None or name in self.seen or n == 0:
                continue
            if obj["metadata"]["labels"].get(L.LABEL_MCS_SERVICE_NAME) != exp[0]:
                continue
            for ep in obj["endpoints"]:
                if ep["addresses"][0] == exp[1] and ep["conditions"]["ready"] is exp[2]:
                    self.seen[name] = now
                    if len(self.seen) == len(self.totals):
                        self.all_seen.set()
                    break

    def arm(self, service: str, ip: str, ready: bool) -> None:
        self.expect, self.seen = (service, ip, ready), {}
        self.all_seen.clear()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- the two implementations --------------------------------------------------------------


class Ours:
    """The real controller, run as the tests and `python -m mcs_controller` run it."""

    def __init__(self, clusters: dict[str, EmbeddedCluster], hub: EmbeddedCluster):
        self.ctl = Controller(dict(clusters), hub)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.ctl.start_informers()
        self._task = asyncio.create_task(self.ctl.run_workers())

    def busy(self) -> bool:
        return len(self.ctl.queue) > 0 or self.ctl.queue.in_progress > 0

    def caches(self) -> list[object]:
        return [i.items() for m in self.ctl.members.values() for i in m.informers]

    def passes(self) -> int:
        return self.ctl.queue.adds_total  # keys handed to reconcile (after dedup)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.ctl.stop()


class Naive:
    """Peer: no informer cache. A source-slice event lists every source slice of every
    cluster, recomputes the Service's imported slices and rewrites all of them everywhere.
    (Its start-up is one list per cluster, not one per Service: only changes relist.)"""

    BUILTIN = f"{L.LABEL_MANAGED_BY}={L.BUILTIN_SLICE_CONTROLLER}"

    def __init__(self, clusters: dict[str, EmbeddedCluster], hub: EmbeddedCluster):
        self.clusters = clusters
        self.pending: set[str] = set()
        self.wake = asyncio.Event()
        self.working = True
        self.syncs = 0
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run()))

    async def _run(self) -> None:
        lists = {n: await c.list(ENDPOINT_SLICES, NS, self.BUILTIN) for n, c in self.clusters.items()}
        for name in sorted({s["metadata"]["labels"][L.LABEL_SERVICE_NAME]
                            for listed in lists.values() for s in listed.items}):
            await self.sync(name, {n: listed.items for n, listed in lists.items()})
            await asyncio.sleep(0)  # embedded calls never suspend: let the watches run
        for n, c in self.clusters.items():
            self._tasks.append(asyncio.create_task(self._watch(c, lists[n].resource_version)))
        while True:
            self.working = False
            await self.wake.wait()
            self.wake.clear()
            self.working = True
            while self.pending:
                await self.sync(self.pending.pop())
                await asyncio.sleep(0)

    async def _watch(self, c: EmbeddedCluster, rv: str) -> None:
        async for ev in c.watch(ENDPOINT_SLICES, NS, self.BUILTIN, resource_version=rv):
            self.pending.add(ev.object["metadata"]["labels"][L.LABEL_SERVICE_NAME])
            self.wake.set()

    async def sync(self, name: str, listed: dict[str, list[JSON]] | None = None) -> None:
        self.syncs += 1
        desired: list[JSON] = []
        for cname, c in sorted(self.clusters.items()):
            try:
                await c.get(SERVICE_EXPORTS, NS, name)
            except NotFound:
                continue
            everything = (listed or {}).get(cname)
            if everything is None:  # the full relist
                everything = (await c.list(ENDPOINT_SLICES, NS, self.BUILTIN)).items
            mine = [s for s in everything if s["metadata"]["labels"][L.LABEL_SERVICE_NAME] == name]
            desired += mirror_slices(source_slices=mine, source_cluster=cname, namespace=NS,
                                     name_prefix=L.shadow_service_name(name),
                                     labels=export_slice_labels(name))
        for c in self.clusters.values():
            for res, obj_name, spec in (
                (SERVICES, L.shadow_service_name(name), {"ports": [{"name": "http", "port": 80}]}),
                (SERVICE_IMPORTS, name, {"type": "ClusterSetIP", "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP"}]}),
            ):
                try:
                    await c.get(res, NS, obj_name)
                except NotFound:
                    await c.create(res, {"metadata": {"name": obj_name, "namespace": NS,
                                                      "labels": import_labels(name)}, "spec": spec})
            sel = f"{L.LABEL_MCS_SERVICE_NAME}={name},{L.LABEL_OWNED_BY}={L.OWNED_BY_VALUE}"
            have = {s["metadata"]["name"] for s in (await c.list(ENDPOINT_SLICES, NS, sel)).items}
            for want in desired:  # no compare: every slice is rewritten
                if want["metadata"]["name"] in have:
                    have.discard(want["metadata"]["name"])
                    await c.replace(ENDPOINT_SLICES, want)
                else:
                    await c.create(ENDPOINT_SLICES, want)
            for extra in have:
                await c.delete(ENDPOINT_SLICES, NS, extra)

    def busy(self) -> bool:
        return self.working or bool(self.pending)

    def caches(self) -> list[object]:
        return []  # nothing held between changes

    def passes(self) -> int:
        return self.syncs

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


IMPLS: dict[str, type[Ours] | type[Naive]] = {"ours": Ours, "naive": Naive}


# -- one measured run -------------------------------------------------------------------


def backlog(clusters: dict[str, EmbeddedCluster]) -> int:
    """Watch events delivered by the store and not yet consumed (a peek at its internals)."""
    return sum(w.queue.qsize() for c in clusters.values() for w in getattr(c, "_watchers", ()))


async def quiesce(impl: Ours | Naive, clusters: dict[str, EmbeddedCluster], quiet: float = 0.01,
                  within: float = 60.0) -> None:
    """Until no work was queued and no watch event was waiting for `quiet` seconds."""
    now = time.monotonic()
    deadline, calm_since = now + within, now
    while now < deadline and now - calm_since < quiet:
        await asyncio.sleep(0.002)
        now = time.monotonic()
        if impl.busy() or backlog(clusters):
            calm_since = now


async def measure(impl_name: str, size: int, changes: int = 200, budget: float = 30.0,
                  converge_timeout: float = 120.0, seed: int = 1, gc_freeze: bool = False,
                  phase_hook: Callable[[str], None] | None = None) -> JSON:
    """Build a fleet, run one implementation, time convergence and `changes` endpoint flips."""
    gc.collect()
    base = rss_mb()
    slices = shape(size)
    clusters, hub = await build_fleet(slices)
    gc.collect()
    fleet_mem = rss_mb()
    probe = Probe(clusters, size)
    impl = IMPLS[impl_name](clusters, hub)
    hook = phase_hook or (lambda phase: None)
    hook("converge")
    t0 = time.perf_counter()
    await impl.start()
    result: JSON = {"impl": impl_name, "size": size, "services": len({s.service for s in slices}),
                    "source_slices": len(slices)}
    try:
        await asyncio.wait_for(probe.converged.wait(), converge_timeout)
    except TimeoutError:
        result.update(converged=False, converge_s=None, imported=dict(probe.totals))
        await impl.stop()
        await probe.close()
        return result
    result["converge_s"] = time.perf_counter() - t0
    await quiesce(impl, clusters, quiet=0.2, within=converge_timeout)
    result["settle_s"] = time.perf_counter() - t0
    result["converged"] = True
    gc.collect()
    conv_mem = rss_mb()
    result["passes_converge"] = impl.passes()
    if gc_freeze:  # what a composition root could do once synced: old objects leave the GC
        gc.freeze()
    gc_before = gc.get_stats()[2]["collections"]
    hook("propagate")
    rng = random.Random(seed)
    flipped: dict[tuple[str, int], bool] = {}
    per_cluster: dict[str, list[float]] = {c: [] for c in clusters}
    all_ms: list[float] = []
    write_ms: list[float] = []
    timeouts = 0
    started = time.perf_counter()
    for _ in range(changes):
        if time.perf_counter() - started > budget and len(all_ms) >= 20:
            break
        s = rng.choice(slices)
        k = rng.randrange(len(s.ips))
        ready = not flipped.get((s.name, k), True)
        flipped[(s.name, k)] = ready
        probe.arm(s.service, s.ips[k], ready)
        patch = [{"op": "replace", "path": f"/endpoints/{k}/conditions/{f}", "value": ready}
                 for f in ("ready", "serving")]
        t = time.perf_counter()
        await clusters[s.cluster].patch(ENDPOINT_SLICES, NS, s.name, patch, patch_type="json")
        write_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()  # committed: the watch events are queued, none handled yet
        try:
            await asyncio.wait_for(probe.all_seen.wait(), CHANGE_TIMEOUT)
        except TimeoutError:
            timeouts += 1
        for c, when in probe.seen.items():
            per_cluster[c].append((when - t) * 1000)
        if len(probe.seen) == len(clusters):
            all_ms.append((max(probe.seen.values()) - t) * 1000)
        await quiesce(impl, clusters)
    end_mem = rss_mb()
    result["passes_per_change"] = (impl.passes() - result["passes_converge"]) / max(1, len(all_ms))
    result["gen2_gcs"] = gc.get_stats()[2]["collections"] - gc_before
    # Who holds the memory: the controller's caches vs the embedded store (objects + history).
    result["cache_mb"] = deep_mb(impl.caches())
    result["store_mb"] = deep_mb([[c._objects, c._history] for c in clusters.values()])
    await impl.stop()
    await probe.close()
    result.update(
        changes=len(all_ms), timeouts=timeouts,
        p50_ms=pct(all_ms, 50), p90_ms=pct(all_ms, 90), p99_ms=pct(all_ms, 99),
        max_ms=max(all_ms, default=float("nan")), store_write_p50_ms=pct(write_ms, 50),
        per_consumer={c: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)}
                      for c, v in per_cluster.items()},
        rss_base_mb=base["rss"], rss_fleet_mb=fleet_mem["rss"], rss_mb=conv_mem["rss"],
        rss_end_mb=end_mem["rss"], hwm_mb=end_mem["hwm"],
        conv_mb=conv_mem["rss"] - fleet_mem["rss"], delta_mb=conv_mem["rss"] - base["rss"],
    )
    return result


def run_loop(coro: Awaitable[JSON]) -> JSON:
    """uvloop when importable (what production runs), else asyncio's default loop."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def run_one(impl: str, size: int, args: argparse.Namespace,
            hook: Callable[[str], None] | None = None) -> JSON:
    return run_loop(measure(impl, size, args.changes, args.budget, args.converge_timeout,
                            gc_freeze=args.gc_freeze, phase_hook=hook))


def run_fresh(impl: str, size: int, args: argparse.Namespace) -> JSON:
    """One measurement in a new interpreter, so sizes and peers do not share a heap."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", f"{impl}:{size}",
           "--changes", str(args.changes), "--budget", str(args.budget),
           "--converge-timeout", str(args.converge_timeout)] + ["--gc-freeze"] * args.gc_freeze
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.converge_timeout + 900)
    if done.returncode != 0:
        return {"impl": impl, "size": size, "converged": False, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- report -------------------------------------------------------------------------------


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b or a != a or b != b else f"x{b / a:.1f}"


def report(results: list[JSON]) -> str:
    """The table, growth between sizes, the peer comparison and the targets."""
    out = [f"{'impl':<6}{'size':>7}{'svcs':>6}{'conv s':>8}{'settle s':>9}{'p50 ms':>8}{'p90 ms':>8}"
           f"{'p99 ms':>8}{'max ms':>8}{'n':>5}{'gc2':>4}{'RSS MB':>8}{'+conv MB':>9}"
           f"{'cache MB':>9}{'store MB':>9}"]
    for r in results:
        if not r.get("converged"):
            out.append(f"{r['impl']:<6}{r['size']:>7}  did not converge: "
                       f"{r.get('imported') or r.get('error', '')}")
            continue
        out.append(f"{r['impl']:<6}{r['size']:>7}{r['services']:>6}{_f(r['converge_s'], '.2f'):>8}"
                   f"{_f(r['settle_s'], '.2f'):>9}{_f(r['p50_ms']):>8}{_f(r['p90_ms']):>8}"
                   f"{_f(r['p99_ms']):>8}{_f(r['max_ms']):>8}{r['changes']:>5}{r['gen2_gcs']:>4}"
                   f"{_f(r['rss_mb']):>8}"
                   f"{_f(r['conv_mb']):>9}{_f(r['cache_mb']):>9}{_f(r['store_mb']):>9}")
    out += ["", "growth between sizes (conv time, p50, p99, +conv MB, cache MB):"]
    for impl in dict.fromkeys(r["impl"] for r in results):
        runs = [r for r in results if r["impl"] == impl and r.get("converged")]
        for a, b in zip(runs, runs[1:], strict=False):
            out.append(f"  {impl:<6}{a['size']:>6} -> {b['size']:<6} (size x{b['size'] / a['size']:.0f}):"
                       f" conv {_ratio(a['converge_s'], b['converge_s'])},"
                       f" p50 {_ratio(a['p50_ms'], b['p50_ms'])}, p99 {_ratio(a['p99_ms'], b['p99_ms'])},"
                       f" +conv MB {_ratio(a['conv_mb'], b['conv_mb'])},"
                       f" cache MB {_ratio(a['cache_mb'], b['cache_mb'])}")
    by = {(r["impl"], r["size"]): r for r in results if r.get("converged")}
    peers = [(s, by[("ours", s)], by[("naive", s)]) for (i, s) in by if i == "ours" and ("naive", s) in by]
    if peers:
        out += ["", "peer (naive full-relist / ours):"]
        out += [f"  {s:>6}: p50 {_ratio(o['p50_ms'], n['p50_ms'])}, p99 {_ratio(o['p99_ms'], n['p99_ms'])},"
                f" conv {_ratio(o['converge_s'], n['converge_s'])}, RSS "
                f"{_ratio(o['rss_mb'], n['rss_mb'])}" for s, o, n in peers]
    p99 = by.get(("ours", TARGET_P99_SIZE), {}).get("p99_ms")
    rss = by.get(("ours", TARGET_RSS_SIZE), {}).get("rss_mb")
    out += ["", "targets:",
            f"  propagation p99 < {TARGET_P99_MS:.0f} ms at {TARGET_P99_SIZE}: {_f(p99)} ms "
            f"{_verdict(p99, TARGET_P99_MS)}",
            f"  resident < {TARGET_RSS_MB:.0f} MB at {TARGET_RSS_SIZE} (whole process, store "
            f"included): {_f(rss)} MB {_verdict(rss, TARGET_RSS_MB)}"]
    return "\n".join(out)


def _verdict(value: float | None, limit: float) -> str:
    return "n/a (size not run)" if value is None else "PASS" if value < limit else "FAIL"


def profile(impl: str, size: int, args: argparse.Namespace, top: int = 20) -> JSON:
    """cProfile the convergence and the propagation phases separately; print the top functions."""
    profiles: dict[str, cProfile.Profile] = {}

    def hook(phase: str) -> None:
        for p in profiles.values():
            p.disable()
        profiles[phase] = cProfile.Profile()
        profiles[phase].enable()

    result = run_one(impl, size, args, hook)
    for p in profiles.values():
        p.disable()
    for phase, p in profiles.items():
        for order in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(p, stream=buf).strip_dirs().sort_stats(order).print_stats(top)
            body = buf.getvalue()
            print(f"=== {impl} {size}: {phase}, by {order} ===\n"
                  + body[body.find("   ncalls"):], file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> list[JSON]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,50000", help="exported endpoints, comma-separated")
    ap.add_argument("--impls", default="ours,naive", help="ours, naive or both")
    ap.add_argument("--changes", type=int, default=200, help="endpoint flips per run")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds of flips per run at most (after 20 samples)")
    ap.add_argument("--converge-timeout", type=float, default=120.0)
    ap.add_argument("--in-process", action="store_true", help="no fresh process per run")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() once settled (what a composition root could do)")
    ap.add_argument("--one", metavar="IMPL:SIZE", help=argparse.SUPPRESS)
    ap.add_argument("--profile", metavar="IMPL:SIZE", help="cProfile one run, print top functions")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    args = ap.parse_args(argv)
    if args.one or args.profile:
        impl, size = (args.one or args.profile).split(":")
        if args.profile:
            result = profile(impl, int(size), args)
            print(report([result]))
        else:
            result = run_one(impl, int(size), args)
            print(json.dumps(result))
        return [result]
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        for impl in args.impls.split(","):
            started = time.perf_counter()
            r = run_one(impl, size, args) if args.in_process else run_fresh(impl, size, args)
            print(f"  {impl} {size}: done in {time.perf_counter() - started:.1f}s",
                  file=sys.stderr, flush=True)
            results.append(r)
    print(report(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
