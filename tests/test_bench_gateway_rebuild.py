"""bench/gateway_rebuild.py runs end to end: for each size, ours (the builder thread) and the
inline peer both apply the change, and their figures are reported. Figures are printed,
never asserted: tests assert behaviour, not timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_reports_ours_and_the_inline_peer_for_each_size(tmp_path: Path) -> None:
    out = tmp_path / "rebuild.json"
    done = subprocess.run([sys.executable, "bench/gateway_rebuild.py", "--sizes", "20,60",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [(r["ingresses"], r["build"]) for r in runs] == [
        (20, "thread"), (20, "inline"), (60, "thread"), (60, "inline")]
    for r in runs:
        assert r["applied"] and r["applied_ms"] > 0 and r["ticks"] > 0
        assert 0 <= r["stall_p99_ms"] <= r["stall_max_ms"]
    assert sum("longest stall: ours" in line for line in done.stdout.splitlines()) == 2


def test_bench_refuses_bad_sizes() -> None:
    done = subprocess.run([sys.executable, "bench/gateway_rebuild.py", "--sizes", "10,lots"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--sizes" in done.stderr and "Traceback" not in done.stderr
