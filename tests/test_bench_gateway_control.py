"""bench/gateway_rebuild.py, bench/gateway_scrape.py and bench/_endpoint_churn.py run end to
end: for each size, ours and the naive peer both do the work (apply the change, serve the
scrape) and their figures are reported. Figures are printed, never asserted: tests assert
behaviour, not timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(tmp_path: Path, script: str, *args: str) -> tuple[list[dict], list[str]]:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, f"bench/{script}", *args, "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())["runs"], done.stdout.splitlines()


def test_bench_reports_ours_and_the_naive_peer_for_each_size(tmp_path: Path) -> None:
    runs, lines = run_bench(tmp_path, "gateway_rebuild.py", "--sizes", "20,60")
    assert [(r["ingresses"], r["build"]) for r in runs] == [
        (n, build) for n in (20, 60) for build in ("ours", "parse-all", "naive")]
    for r in runs:
        assert r["applied"] and r["applied_ms"] > 0 and r["ticks"] > 0
        assert 0 <= r["stall_p99_ms"] <= r["stall_max_ms"]
    assert sum("longest stall: ours" in line for line in lines) == 2


def test_bench_refuses_bad_sizes() -> None:
    done = subprocess.run([sys.executable, "bench/gateway_rebuild.py", "--sizes", "10,lots"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--sizes" in done.stderr and "Traceback" not in done.stderr


def test_scrape_bench_reports_ours_and_the_naive_peer(tmp_path: Path) -> None:
    runs, lines = run_bench(tmp_path, "gateway_scrape.py", "--routes", "30")
    assert [(r["routes"], r["scrape"]) for r in runs] == [(30, "ours"), (30, "naive")]
    assert runs[0]["bytes"] > 30 * 2 * 17 * 40  # every route's series, in both
    assert abs(runs[0]["bytes"] - runs[1]["bytes"]) < runs[1]["bytes"] * 0.05
    assert all(r["cpu_ms"] > 0 and r["stall_max_ms"] >= 0 for r in runs)
    assert any("CPU a scrape: ours" in line for line in lines)


def test_endpoint_churn_probe_times_each_slice_change() -> None:
    done = subprocess.run([sys.executable, "bench/_endpoint_churn.py", "--services", "20",
                           "--changes", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("20 Services x 10 endpoints: ") and "ms a slice change" in done.stdout
