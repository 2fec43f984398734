"""The controller benchmark runs, and reports what it claims to measure (not how fast)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "controller.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_controller", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def check_run(r: dict, size: int, changes: int) -> None:
    assert r["converged"], r
    assert r["size"] == size
    assert r["timeouts"] == 0
    assert r["changes"] == changes
    for cluster in ("c1", "c2", "c3"):  # the exporter imports too
        seen = r["per_consumer"][cluster]
        assert seen["n"] == changes, (cluster, r["per_consumer"])
        # "every consumer holds it" is the slowest consumer, per change
        assert 0 < seen["p50_ms"] <= r["p50_ms"] and seen["p99_ms"] <= r["p99_ms"]
    assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"] < bench.CHANGE_TIMEOUT * 1000
    assert 0 < r["converge_s"] <= r["settle_s"] and r["cpu_s"] > 0
    assert r["rss_base_mb"] <= r["rss_fleet_mb"] and r["rss_mb"] > 0 and r["store_mb"] > 0


def test_shape_counts_every_endpoint_in_slices_of_at_most_100():
    slices = bench.shape(1000)
    assert sum(len(s.ips) for s in slices) == 1000
    assert max(len(s.ips) for s in slices) == 100
    assert {s.cluster for s in slices} == {"c1", "c2"}  # some Services export from two clusters
    ips = [ip for s in slices for ip in s.ips]
    assert len(set(ips)) == len(ips)


def test_smoke_split_both_implementations_propagate_over_http(capsys):
    results = bench.main(["--sizes", "200", "--changes", "12", "--no-fresh"])
    assert [r["impl"] for r in results] == ["ours", "naive"]
    for r in results:
        check_run(r, 200, 12)
        assert r["mode"] == "split"
        assert r["client"] == "KubeCluster"  # the controller talked HTTP to the store process
        assert r["store_rss_mb"] > 0 and r["store_gc2"] >= 0  # the store process, apart
    assert results[0]["cache_mb"] > 0  # ours holds informer caches
    assert results[1]["cache_mb"] == 0  # the peer holds nothing between changes
    out = capsys.readouterr().out
    assert "peer (naive full-relist / ours):" in out
    assert "propagation p99 < 100 ms at 10000: - ms n/a (size not run)" in out
    assert "resident < 200 MB at 50000 (controller process; the store's process: - MB)" in out


def test_smoke_in_process_store_calls_the_store_directly():
    [r] = bench.main(["--sizes", "200", "--changes", "5", "--impls", "ours", "--no-fresh",
                      "--in-process-store"])
    check_run(r, 200, 5)
    assert r["mode"] == "1proc" and r["client"] == "EmbeddedCluster"
    assert r["store_rss_mb"] is None  # one process: no separate store figure


async def test_store_process_serves_the_fleet_and_ends_when_told():
    proc = bench.StoreProcess()
    urls = await proc.start(100, 1)
    assert sorted(urls) == ["c1", "c2", "c3", "hub"]
    from mcs_controller.access.kube import KubeCluster, KubeConnection

    c1 = KubeCluster("c1", KubeConnection.for_server(urls["c1"]))
    try:
        listed = await c1.list(bench.ENDPOINT_SLICES, bench.NS)
        in_c1 = [s for s in bench.shape(100) if s.cluster == "c1"]
        assert sorted(s["metadata"]["name"] for s in listed.items) == sorted(s.name for s in in_c1)
        assert sum(len(s["endpoints"]) for s in listed.items) == sum(len(s.ips) for s in in_c1)
        assert await proc.call("info") == {"services": 2, "source_slices": 3}
        assert await proc.call("imported") == {"c1": 0, "c2": 0, "c3": 0}  # no controller yet
        assert await proc.call("converged", 0.05) is None
        mem = await proc.call("memory")
        assert mem["rss"] > 0 and proc.proc.pid != os.getpid()
    finally:
        await c1.close()
        await proc.close()
    assert proc.proc.returncode == 0


def test_report_flags_targets_and_growth():
    def run(impl: str, size: int, p99: float, rss: float, mode: str = "split") -> dict:
        return {"impl": impl, "mode": mode, "size": size, "services": size // 100,
                "converged": True, "converge_s": size / 1e4, "cpu_s": size / 2e4,
                "settle_s": size / 1e4,
                "p50_ms": p99 / 2, "p90_ms": p99, "p99_ms": p99, "max_ms": p99, "changes": 200,
                "gen2_gcs": 0, "rss_mb": rss, "conv_mb": rss / 2, "cache_mb": rss / 4,
                "store_rss_mb": None if mode == "1proc" else rss * 2, "store_mb": rss / 4}

    text = bench.report([run("ours", 10_000, 50.0, 80.0), run("ours", 50_000, 60.0, 150.0),
                         run("naive", 10_000, 500.0, 70.0)])
    assert "propagation p99 < 100 ms at 10000: 50.0 ms PASS" in text
    assert ("resident < 200 MB at 50000 (controller process; the store's process: 300.0 MB): "
            "150.0 MB PASS") in text
    assert "10000 -> 50000  (size x5): conv x5.0, cpu x5.0, p50 x1.2, p99 x1.2, +conv MB x1.9" in text
    assert "10000: p50 x10.0, p99 x10.0" in text
    one = bench.report([run("ours", 50_000, 60.0, 250.0, "1proc")])
    assert "(whole process, store included): 250.0 MB FAIL" in one
    assert one.splitlines()[1].split()[:3] == ["ours", "1proc", "50000"]


@pytest.mark.slow
def test_full_size_run_converges_and_propagates_everywhere():
    changes = 50
    results = bench.main(["--changes", str(changes), "--budget", "60"])
    assert [(r["impl"], r["size"]) for r in results] == [
        (impl, size) for size in (1000, 10000, 50000) for impl in ("ours", "naive")]
    for r in results:
        check_run(r, r["size"], changes if r["impl"] == "ours" else r["changes"])
        assert r["changes"] >= 20 and r["mode"] == "split" and r["store_rss_mb"] > 0
