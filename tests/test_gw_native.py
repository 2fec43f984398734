"""The compiled data path (setup.py, mypyc): what is compiled, and the stale-build guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import _native

ROOT = Path(__file__).resolve().parent.parent


def _setup_list() -> list[str]:
    text = (ROOT / "setup.py").read_text()
    return [line.strip().strip('",')[:-3].replace("/", ".") for line in text.splitlines()
            if line.strip().startswith('"gateway/') and line.strip().endswith('.py",')]


def test_every_listed_module_is_compiled_unless_built_interpreted() -> None:
    listed = _setup_list()
    assert "gateway.proxy.exchange" in listed and len(listed) >= 15
    compiled = _native.compiled_modules()
    if os.environ.get("AMCS_COMPILE") == "0" or not compiled:
        pytest.skip("interpreted build (AMCS_COMPILE=0 or no C compiler)")
    assert compiled == sorted(listed)
    import gateway.proxy.exchange as ex
    assert ex.__file__.endswith(".so")


def test_stale_extension_is_named(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    fresh_so, stale_so = pkg / "a.cpython-311-x86_64-linux-gnu.so", pkg / "sub" / "b.cpython-311-x86_64-linux-gnu.so"
    for path in (fresh_so, stale_so, pkg / "a.py", pkg / "sub" / "b.py"):
        path.write_text("")
    os.utime(pkg / "a.py", (1000, 1000))  # older than its extension
    os.utime(stale_so, (1000, 1000))  # its source changed since
    assert _native.compiled_modules(pkg) == ["pkg.a", "pkg.sub.b"]
    assert _native.stale_sources(pkg) == ["pkg/sub/b.py"]


def test_importing_a_stale_build_fails_with_the_rebuild_command(tmp_path: Path) -> None:
    """The real guard, in a child process over a copy of the package with one stale module."""
    if not _native.compiled_modules():
        pytest.skip("interpreted build: nothing can be stale")
    import shutil
    copy = tmp_path / "gateway"
    shutil.copytree(_native.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    so = next(copy.rglob("exchange.*.so"))
    os.utime(so, (1000, 1000))
    proc = subprocess.run([sys.executable, "-c", "import gateway"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "gateway/proxy/exchange.py changed after the gateway was compiled" in proc.stderr
    assert "./dev build" in proc.stderr
