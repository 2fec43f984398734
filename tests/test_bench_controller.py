"""The controller benchmark runs, and reports what it claims to measure (not how fast)."""

from __future__ import annotations

import importlib.util
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
    assert 0 < r["converge_s"] <= r["settle_s"]
    assert r["rss_base_mb"] <= r["rss_fleet_mb"] and r["rss_mb"] > 0 and r["store_mb"] > 0


def test_shape_counts_every_endpoint_in_slices_of_at_most_100():
    slices = bench.shape(1000)
    assert sum(len(s.ips) for s in slices) == 1000
    assert max(len(s.ips) for s in slices) == 100
    assert {s.cluster for s in slices} == {"c1", "c2"}  # some Services export from two clusters
    ips = [ip for s in slices for ip in s.ips]
    assert len(set(ips)) == len(ips)


def test_smoke_both_implementations_propagate_to_every_consumer(capsys):
    results = bench.main(["--sizes", "200", "--changes", "15", "--in-process"])
    assert [r["impl"] for r in results] == ["ours", "naive"]
    for r in results:
        check_run(r, 200, 15)
    assert results[0]["cache_mb"] > 0  # ours holds informer caches
    assert results[1]["cache_mb"] == 0  # the peer holds nothing between changes
    out = capsys.readouterr().out
    assert "peer (naive full-relist / ours):" in out
    assert "propagation p99 < 100 ms at 10000: - ms n/a (size not run)" in out


def test_report_flags_targets_and_growth():
    def run(impl: str, size: int, p99: float, rss: float) -> dict:
        return {"impl": impl, "size": size, "services": size // 100, "converged": True,
                "converge_s": size / 1e4, "settle_s": size / 1e4, "p50_ms": p99 / 2,
                "p90_ms": p99, "p99_ms": p99, "max_ms": p99, "changes": 200, "gen2_gcs": 0,
                "rss_mb": rss, "conv_mb": rss / 2, "cache_mb": rss / 4, "store_mb": rss / 4}

    text = bench.report([run("ours", 10_000, 50.0, 80.0), run("ours", 50_000, 60.0, 250.0),
                         run("naive", 10_000, 500.0, 70.0)])
    assert "propagation p99 < 100 ms at 10000: 50.0 ms PASS" in text
    assert "250.0 MB FAIL" in text
    assert "10000 -> 50000  (size x5): conv x5.0, p50 x1.2, p99 x1.2" in text
    assert "10000: p50 x10.0, p99 x10.0" in text


@pytest.mark.slow
def test_full_size_run_converges_and_propagates_everywhere():
    changes = 50
    results = bench.main(["--changes", str(changes), "--budget", "60"])
    assert [(r["impl"], r["size"]) for r in results] == [
        (impl, size) for size in (1000, 10000, 50000) for impl in ("ours", "naive")]
    for r in results:
        check_run(r, r["size"], changes if r["impl"] == "ours" else r["changes"])
        assert r["changes"] >= 20
