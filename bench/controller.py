"""Controller benchmark: endpoint-change propagation latency and memory vs fleet size.

Three member clusters and a hub; c1 (and, for every fourth Service, c2 too) exports Services
whose source EndpointSlices hold `size` endpoints in all. For each size, in a fresh process:
convergence time, then single-endpoint changes (one ready flag flipped in a source slice),
each timed until a watch in every consumer (c1, c2, c3) sees it, and resident memory. The
same run measures a naive peer (no cache, a full relist per change: _controller_naive.py).

Split mode (the default): the clusters live in a child process that serves each one as a
Kubernetes API over HTTP, as real API servers are not part of the controller. The controller
runs in this process with `KubeCluster` clients, so its RSS is the controller's alone. The
child makes the changes and times them with a watch on its own store (one clock).
`--in-process-store`: the store runs in the controller's process, called directly.

    python bench/controller.py [--sizes 1000,10000,50000] [--changes 200] [--impls ours,naive]
    python bench/controller.py --in-process-store     # one process, no HTTP (for comparison)
    python bench/controller.py --profile ours:10000   # cProfile of the controller process
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
from typing import Any

SELF = Path(__file__).resolve()
if str(SELF.parent.parent) not in sys.path:
    sys.path.insert(0, str(SELF.parent.parent))

from bench._controller_naive import NS, Naive  # noqa: E402
from mcs_controller.access.api import JSON, ClusterClient  # noqa: E402
from mcs_controller.access.embedded import EmbeddedCluster  # noqa: E402
from mcs_controller.access.resources import (  # noqa: E402
    ENDPOINT_SLICES,
    NAMESPACES,
    SERVICE_EXPORTS,
    SERVICES,
)
from mcs_controller.engine.controller import Controller  # noqa: E402
from mcs_controller.model import labels as L  # noqa: E402

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


# -- the store's side ---------------------------------------------------------------------


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
        for cluster in ("c1", "c2") if i % 4 == 1 else ("c1",):
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


class Fleet:
    """Embedded clusters, a watch on what every consumer imports, and the changes to time.

    Calls answer plain JSON, so `call` means the same in the controller's process
    (`--in-process-store`) and in the store process, driven over a pipe (split mode)."""

    OPS = frozenset({"info", "converged", "backlog", "change", "memory", "imported", "freeze"})

    def __init__(self, size: int, seed: int = 1):
        self.size, self.rng, self.flipped = size, random.Random(seed), {}
        self.slices = shape(size)
        self.clusters = {n: EmbeddedCluster(n, f"10.{10 + i}.0.0/16", bookmark_interval=0)
                         for i, n in enumerate(CLUSTERS)}
        self.hub = EmbeddedCluster("hub", "10.9.0.0/16", bookmark_interval=0)
        self.totals = dict.fromkeys(self.clusters, 0)  # imported endpoints per consumer
        self._counts: dict[str, dict[str, int]] = {c: {} for c in self.clusters}
        self.all_in, self.all_in_at = asyncio.Event(), 0.0  # every consumer holds `size`
        self.expect: tuple[str, str, bool] | None = None  # (service, ip, ready) awaited
        self.seen: dict[str, float] = {}
        self.all_seen = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def build(self) -> None:
        for c in (*self.clusters.values(), self.hub):
            await c.create(NAMESPACES, {"metadata": {"name": NS}})
        exported: set[tuple[str, str]] = set()
        for s in self.slices:
            c = self.clusters[s.cluster]
            if (s.cluster, s.service) not in exported:
                exported.add((s.cluster, s.service))
                await c.create(SERVICES, {"metadata": {"name": s.service, "namespace": NS}, "spec": {
                    "selector": {"app": s.service},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
                await c.create(SERVICE_EXPORTS, {"metadata": {"name": s.service, "namespace": NS}})
            await c.create(ENDPOINT_SLICES, source_slice(s))
        self._tasks = [asyncio.create_task(self._watch(n, c)) for n, c in self.clusters.items()]
        self.cpu0 = time.process_time()

    async def _watch(self, name: str, client: EmbeddedCluster) -> None:
        """Imported slices as a consumer sees them: counted, and checked for the awaited change."""
        ours = f"{L.LABEL_OWNED_BY}={L.OWNED_BY_VALUE}"
        async for ev in client.watch(ENDPOINT_SLICES, NS, label_selector=ours):
            now = time.monotonic()
            obj, counts = ev.object, self._counts[name]
            n = 0 if ev.type == "DELETED" else len(obj.get("endpoints") or [])
            self.totals[name] += n - counts.get(obj["metadata"]["name"], 0)
            counts[obj["metadata"]["name"]] = n
            if not self.all_in.is_set() and all(t == self.size for t in self.totals.values()):
                self.all_in_at = now
                self.all_in.set()
            exp = self.expect
            if exp is None or name in self.seen or n == 0 or \
                    obj["metadata"]["labels"].get(L.LABEL_MCS_SERVICE_NAME) != exp[0]:
                continue
            for ep in obj["endpoints"]:
                if ep["addresses"][0] == exp[1] and ep["conditions"]["ready"] is exp[2]:
                    self.seen[name] = now
                    if len(self.seen) == len(self.clusters):
                        self.all_seen.set()
                    break

    async def call(self, op: str, *args: Any) -> Any:
        assert op in self.OPS, op
        return await getattr(self, op)(*args)

    async def info(self) -> JSON:
        return {"services": len({s.service for s in self.slices}), "source_slices": len(self.slices)}

    async def converged(self, within: float) -> JSON | None:
        """When (time.monotonic: system-wide on Linux) every consumer held `size` endpoints,
        and this process's CPU seconds since the fleet was loaded."""
        try:
            await asyncio.wait_for(self.all_in.wait(), within)
        except TimeoutError:
            return None
        return {"at": self.all_in_at, "cpu_s": time.process_time() - self.cpu0}

    async def backlog(self) -> int:
        """Watch events queued by the store and not yet consumed (a peek at its internals)."""
        return sum(w.queue.qsize() for c in self.clusters.values() for w in c._watchers)

    async def imported(self) -> dict[str, int]:
        return dict(self.totals)

    async def change(self) -> JSON:
        """Flip one endpoint's ready/serving; ms from commit until each consumer's watch saw it."""
        s = self.rng.choice(self.slices)
        k = self.rng.randrange(len(s.ips))
        ready = self.flipped[(s.name, k)] = not self.flipped.get((s.name, k), True)
        self.expect, self.seen = (s.service, s.ips[k], ready), {}
        self.all_seen.clear()
        patch = [{"op": "replace", "path": f"/endpoints/{k}/conditions/{f}", "value": ready}
                 for f in ("ready", "serving")]
        t = time.monotonic()
        await self.clusters[s.cluster].patch(ENDPOINT_SLICES, NS, s.name, patch, patch_type="json")
        write_ms = (time.monotonic() - t) * 1000
        t = time.monotonic()  # committed: the watch events are queued, none handled yet
        try:
            await asyncio.wait_for(self.all_seen.wait(), CHANGE_TIMEOUT)
        except TimeoutError:
            pass
        return {"service": s.service, "write_ms": write_ms,
                "seen": {c: (w - t) * 1000 for c, w in self.seen.items()}}

    async def memory(self, deep: bool = False) -> JSON:
        """This process's RSS and full collections so far (before this one's); with `deep`,
        what the store holds (objects and watch history)."""
        out: JSON = {"gc2": gc.get_stats()[2]["collections"]}
        gc.collect()
        out["rss"] = rss_mb()["rss"]
        if deep:
            out["store_mb"] = deep_mb([[c._objects, c._history] for c in self.clusters.values()])
        return out

    async def freeze(self) -> None:
        """Settled objects leave the collector: a real API server has no Python GC pauses."""
        gc.collect()
        gc.freeze()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class StoreProcess:
    """The `Fleet` in a child process that serves each cluster over HTTP (split mode).

    Calls and answers are JSON lines on its stdin and stdout; closing its stdin ends it."""

    async def start(self, size: int, seed: int) -> dict[str, str]:
        """Start it; the API server URL of each cluster (and the hub) once the fleet is loaded."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SELF), "--store-child", f"{size}:{seed}",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return await self._answer()

    async def call(self, op: str, *args: Any) -> Any:
        self.proc.stdin.write(json.dumps([op, args]).encode() + b"\n")  # type: ignore[union-attr]
        return await self._answer()

    async def _answer(self) -> Any:
        line = await self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the store process exited with {await self.proc.wait()}")
        return json.loads(line)

    async def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def store_child(size: int, seed: int) -> None:
    """The store process: load the fleet, serve it, answer the controller process's calls."""
    from mcs_controller.access.served import serve_cluster

    fleet = Fleet(size, seed)
    await fleet.build()
    servers = {n: await serve_cluster(c, "127.0.0.1", 0)
               for n, c in {**fleet.clusters, "hub": fleet.hub}.items()}
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    answer = {n: s.url for n, s in servers.items()}
    while True:
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        line = await reader.readline()
        if not line:  # EOF: the controller process is done
            break
        op, args = json.loads(line)
        answer = await fleet.call(op, *args)
    for server in servers.values():
        await server.stop()
    await fleet.close()


# -- the controller's side ----------------------------------------------------------------


class Ours:
    """The real controller, run as the tests and `python -m mcs_controller` run it."""

    def __init__(self, clusters: dict[str, ClusterClient], hub: ClusterClient):
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


IMPLS: dict[str, type[Ours] | type[Naive]] = {"ours": Ours, "naive": Naive}
Store = Fleet | StoreProcess


async def quiesce(impl: Ours | Naive, store: Store, quiet: float = 0.01,
                  within: float = 60.0) -> None:
    """Until no work was queued and no watch event was waiting in the store for `quiet` s."""
    now = time.monotonic()
    deadline, calm_since = now + within, now
    while now < deadline and now - calm_since < quiet:
        await asyncio.sleep(0.002)
        if impl.busy() or await store.call("backlog"):
            calm_since = time.monotonic()
        now = time.monotonic()


async def open_store(size: int, seed: int, split: bool) -> tuple[Store, dict[str, ClusterClient]]:
    """The fleet, and the clients the controller reaches it with (KubeCluster when split)."""
    if not split:
        fleet = Fleet(size, seed)
        await fleet.build()
        return fleet, {**fleet.clusters, "hub": fleet.hub}
    from mcs_controller.access.kube import KubeCluster, KubeConnection

    proc = StoreProcess()
    urls = await proc.start(size, seed)
    return proc, {n: KubeCluster(n, KubeConnection.for_server(u)) for n, u in urls.items()}


async def measure(impl_name: str, size: int, changes: int = 200, budget: float = 30.0,
                  converge_timeout: float = 120.0, seed: int = 1, gc_freeze: bool = False,
                  split: bool = True, phase_hook: Callable[[str], None] | None = None) -> JSON:
    """Load a fleet, run one implementation, time convergence and `changes` endpoint flips."""
    hook = phase_hook or (lambda phase: None)
    gc.collect()
    base = rss_mb()
    store, clients = await open_store(size, seed, split)
    hub = clients.pop("hub")
    r: JSON = {"impl": impl_name, "size": size, "mode": "split" if split else "1proc",
               "client": type(hub).__name__, **await store.call("info")}
    gc.collect()
    fleet_mem = rss_mb()
    impl = IMPLS[impl_name](clients, hub)
    hook("converge")
    t0, cpu0 = time.monotonic(), time.process_time()
    await impl.start()
    per_cluster: dict[str, list[float]] = {c: [] for c in CLUSTERS}
    all_ms: list[float] = []
    write_ms: list[float] = []
    try:
        done = await store.call("converged", converge_timeout)
        if done is None:
            return {**r, "converged": False, "imported": await store.call("imported")}
        r.update(converged=True, converge_s=done["at"] - t0, cpu_s=time.process_time() - cpu0,
                 store_cpu_s=done["cpu_s"] if split else None)
        await quiesce(impl, store, quiet=0.2, within=converge_timeout)
        r["settle_s"] = time.monotonic() - t0
        gc.collect()
        conv_mem, store_mem = rss_mb(), await store.call("memory")
        if split:
            await store.call("freeze")
        r["passes_converge"] = impl.passes()
        if gc_freeze:  # what a composition root could do once synced: old objects leave the GC
            gc.freeze()
        gc_before = gc.get_stats()[2]["collections"]
        hook("propagate")
        started = time.monotonic()
        for _ in range(changes):
            if time.monotonic() - started > budget and len(all_ms) >= 20:
                break
            flip = await store.call("change")
            write_ms.append(flip["write_ms"])
            for c, ms in flip["seen"].items():
                per_cluster[c].append(ms)
            if len(flip["seen"]) == len(CLUSTERS):  # the slowest consumer's time
                all_ms.append(max(flip["seen"].values()))
            await quiesce(impl, store)
        end_mem = rss_mb()
        r["passes_per_change"] = (impl.passes() - r["passes_converge"]) / max(1, len(all_ms))
        r["gen2_gcs"] = gc.get_stats()[2]["collections"] - gc_before
        r["cache_mb"] = deep_mb(impl.caches())  # what the controller's caches hold
        store_end = await store.call("memory", True)
        r["store_mb"] = store_end["store_mb"]
        if split:  # full collections in the store process while changes ran
            r["store_gc2"] = store_end["gc2"] - store_mem["gc2"] - 2
    finally:
        await impl.stop()
        for c in (*clients.values(), hub):
            if hasattr(c, "close"):
                await c.close()
        await store.close()
    return {**r, "changes": len(all_ms), "timeouts": len(write_ms) - len(all_ms),
            "p50_ms": pct(all_ms, 50), "p90_ms": pct(all_ms, 90), "p99_ms": pct(all_ms, 99),
            "max_ms": max(all_ms, default=float("nan")), "store_write_p50_ms": pct(write_ms, 50),
            "per_consumer": {c: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)}
                             for c, v in per_cluster.items()},
            "rss_base_mb": base["rss"], "rss_fleet_mb": fleet_mem["rss"], "rss_mb": conv_mem["rss"],
            "rss_end_mb": end_mem["rss"], "hwm_mb": end_mem["hwm"],
            "conv_mb": conv_mem["rss"] - fleet_mem["rss"], "delta_mb": conv_mem["rss"] - base["rss"],
            "store_rss_mb": store_mem["rss"] if split else None}


def run_loop(coro: Awaitable[Any]) -> Any:
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
                            gc_freeze=args.gc_freeze, split=args.split, phase_hook=hook))


def run_fresh(impl: str, size: int, args: argparse.Namespace) -> JSON:
    """One measurement in a new interpreter, so sizes and peers do not share a heap."""
    cmd = [sys.executable, str(SELF), "--one", f"{impl}:{size}", "--changes", str(args.changes),
           "--budget", str(args.budget), "--converge-timeout", str(args.converge_timeout)]
    cmd += ["--gc-freeze"] * args.gc_freeze + ["--in-process-store"] * (not args.split)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.converge_timeout + 900)
    if done.returncode != 0:
        return {"impl": impl, "size": size, "converged": False, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- report -------------------------------------------------------------------------------


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b or a != a or b != b else f"x{b / a:.1f}"


COLUMNS = (  # header, result key, width, format
    ("conv s", "converge_s", 8, ".2f"), ("cpu s", "cpu_s", 7, ".2f"), ("settle s", "settle_s", 9, ".2f"),
    ("p50 ms", "p50_ms", 8, ".1f"), ("p90 ms", "p90_ms", 8, ".1f"), ("p99 ms", "p99_ms", 8, ".1f"),
    ("max ms", "max_ms", 8, ".1f"), ("n", "changes", 5, "d"), ("gc2", "gen2_gcs", 4, "d"),
    ("RSS MB", "rss_mb", 8, ".1f"), ("+conv MB", "conv_mb", 9, ".1f"),
    ("cache MB", "cache_mb", 9, ".1f"), ("store RSS", "store_rss_mb", 10, ".1f"),
    ("store MB", "store_mb", 9, ".1f"))
GROWTH = (("conv", "converge_s"), ("cpu", "cpu_s"), ("p50", "p50_ms"), ("p99", "p99_ms"), ("+conv MB", "conv_mb"),
          ("cache MB", "cache_mb"), ("store RSS", "store_rss_mb"))


def report(results: list[JSON]) -> str:
    """The table, growth between sizes, the peer comparison and the targets."""
    out = [f"{'impl':<6}{'mode':>6}{'size':>7}{'svcs':>6}"
           + "".join(f"{h:>{w}}" for h, _, w, _ in COLUMNS)]
    for r in results:
        head = f"{r['impl']:<6}{r.get('mode', ''):>6}{r['size']:>7}"
        if not r.get("converged"):
            out.append(f"{head}  did not converge: {r.get('imported') or r.get('error', '')}")
            continue
        out.append(f"{head}{r['services']:>6}"
                   + "".join(f"{_f(r.get(k), spec):>{w}}" for _, k, w, spec in COLUMNS))
    out += ["", "growth between sizes (" + ", ".join(g for g, _ in GROWTH) + "):"]
    for impl in dict.fromkeys(r["impl"] for r in results):
        runs = [r for r in results if r["impl"] == impl and r.get("converged")]
        for a, b in zip(runs, runs[1:], strict=False):
            out.append(f"  {impl:<6}{a['size']:>6} -> {b['size']:<6} (size x{b['size'] / a['size']:.0f}): "
                       + ", ".join(f"{g} {_ratio(a.get(k), b.get(k))}" for g, k in GROWTH))
    by = {(r["impl"], r["size"]): r for r in results if r.get("converged")}
    peers = [(s, by[("ours", s)], by[("naive", s)]) for (i, s) in by if i == "ours" and ("naive", s) in by]
    if peers:
        out += ["", "peer (naive full-relist / ours):"]
        out += [f"  {s:>6}: p50 {_ratio(o['p50_ms'], n['p50_ms'])}, p99 {_ratio(o['p99_ms'], n['p99_ms'])},"
                f" conv {_ratio(o['converge_s'], n['converge_s'])}, RSS "
                f"{_ratio(o['rss_mb'], n['rss_mb'])}" for s, o, n in peers]
    p99 = by.get(("ours", TARGET_P99_SIZE), {}).get("p99_ms")
    big = by.get(("ours", TARGET_RSS_SIZE), {})
    where = ("whole process, store included" if big.get("mode") == "1proc" else
             f"controller process; the store's process: {_f(big.get('store_rss_mb'))} MB")
    out += ["", "targets:",
            f"  propagation p99 < {TARGET_P99_MS:.0f} ms at {TARGET_P99_SIZE}: {_f(p99)} ms "
            f"{_verdict(p99, TARGET_P99_MS)}",
            f"  resident < {TARGET_RSS_MB:.0f} MB at {TARGET_RSS_SIZE} ({where}): "
            f"{_f(big.get('rss_mb'))} MB {_verdict(big.get('rss_mb'), TARGET_RSS_MB)}"]
    return "\n".join(out)


def _verdict(value: float | None, limit: float) -> str:
    return "n/a (size not run)" if value is None else "PASS" if value < limit else "FAIL"


def profile(impl: str, size: int, args: argparse.Namespace, top: int = 20) -> JSON:
    """cProfile the controller process's convergence and propagation phases separately."""
    profiles: dict[str, cProfile.Profile] = {}

    def hook(phase: str) -> None:
        for p in profiles.values():
            p.disable()
        profiles[phase] = cProfile.Profile()
        profiles[phase].enable()

    result = run_one(impl, size, args, hook)
    for phase, p in profiles.items():
        p.disable()
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
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--split", dest="split", action="store_true", default=True,
                       help="the store in a child process, reached over HTTP (default)")
    where.add_argument("--in-process-store", dest="split", action="store_false",
                       help="the store in the controller's process, called directly")
    ap.add_argument("--no-fresh", action="store_true",
                    help="measure every run in this interpreter (no fresh one per run)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() once settled (what a composition root could do)")
    ap.add_argument("--one", metavar="IMPL:SIZE", help=argparse.SUPPRESS)
    ap.add_argument("--store-child", metavar="SIZE:SEED", help=argparse.SUPPRESS)
    ap.add_argument("--profile", metavar="IMPL:SIZE", help="cProfile one run, print top functions")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    args = ap.parse_args(argv)
    if args.store_child:
        size, seed = args.store_child.split(":")
        run_loop(store_child(int(size), int(seed)))
        return []
    if args.one or args.profile:
        impl, size = (args.one or args.profile).split(":")
        result = profile(impl, int(size), args) if args.profile else run_one(impl, int(size), args)
        print(report([result]) if args.profile else json.dumps(result))
        return [result]
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        for impl in args.impls.split(","):
            started = time.monotonic()
            r = run_one(impl, size, args) if args.no_fresh else run_fresh(impl, size, args)
            print(f"  {impl} {size}: done in {time.monotonic() - started:.1f}s",
                  file=sys.stderr, flush=True)
            results.append(r)
    print(report(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
