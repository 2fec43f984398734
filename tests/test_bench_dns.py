"""bench/dns.py runs end to end (1-second runs on tests/dnsfleet): all three servers answer
the same questions identically and the report carries the figures and the two targets.
Figures are printed, never asserted: tests assert behaviour, not timings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def installed(name: str) -> bool:
    return bool(shutil.which(name) or Path("/usr/sbin", name).exists())


@pytest.mark.skipif(not (installed("dnsperf") and installed("knotd")),
                    reason="dnsperf and knotd are needed (Debian packages dnsperf, knot)")
def test_bench_compares_ours_knot_and_naive_on_the_same_answers(tmp_path: Path) -> None:
    out = tmp_path / "dns.json"
    done = subprocess.run(
        [sys.executable, "bench/dns.py", "--fleet", "tests/dnsfleet", "--cluster", "c1",
         "--duration", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    res = json.loads(out.read_text())
    servers = res["servers"]
    assert list(servers) == ["ours", "knot", "naive"]
    for name, s in servers.items():
        assert s["qps"] > 0 and s["latency_ms_peak"] > 0 and s["latency_ms_at_load"] > 0, name
        assert s["mismatches"] == 0, f"{name} answers differently from ours"
    assert res["rate_at_load"] == pytest.approx(0.8 * servers["ours"]["qps"], rel=1e-6)
    assert res["questions"] == 14  # A + AAAA of 4 imports, 6 named ports
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["server", "peak", "qps"]
    assert [line.split()[0] for line in lines[1:4]] == ["ours", "knot", "naive"]
    verdicts = [line for line in lines if line.startswith("target: ")]
    assert len(verdicts) == 3 and all(("PASS" in v) != ("FAIL" in v) for v in verdicts)
