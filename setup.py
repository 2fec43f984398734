"""Build: the gateway's per-request modules are compiled with mypyc (native classes, typed
attributes; about a third fewer instructions per proxied request than interpreted, see
bench/README.md). The sources stay plain Python and run as they are with AMCS_COMPILE=0
(or without a C compiler); `gateway/_native.py` refuses to run a compiled module older than
its source.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent

#: The data path and what it calls per request. Everything else stays interpreted.
COMPILED = [
    "gateway/types.py",
    "gateway/variables.py",
    "gateway/routing/matching.py",
    "gateway/routing/table.py",
    "gateway/proxy/config.py",
    "gateway/proxy/states.py",
    "gateway/proxy/heads.py",
    "gateway/proxy/tunnel.py",
    "gateway/proxy/known_answer.py",
    "gateway/proxy/pool.py",
    "gateway/proxy/exchange_base.py",
    "gateway/proxy/retry.py",
    "gateway/proxy/throttle.py",
    "gateway/proxy/response.py",
    "gateway/proxy/exchange.py",
    "gateway/proxy/client.py",
    "gateway/proxy/mirror_line.py",
    "gateway/proxy/mirror.py",
    "gateway/proxy/server.py",
    "gateway/upstream/lb.py",
    "gateway/upstream/balancer.py",
    "gateway/upstream/outlier.py",
    "gateway/upstream/manager.py",
    "gateway/metrics.py",
    "gateway/access_log.py",
]


def _clean(keep: tuple[str, ...] = (), shared: tuple[str, ...] = ()) -> None:
    """Remove what earlier compiled builds left in the tree: all of it for an interpreted
    build; else the shared libraries of other module sets and the modules no longer
    compiled, so a deleted source cannot stay importable (what is rebuilt now stays usable
    while the build runs)."""
    for so in ROOT.glob("*__mypyc*.so"):
        if so.name.split(".", 1)[0] not in shared:
            so.unlink()
    for so in ROOT.glob("gateway/**/*.so"):
        if so.relative_to(ROOT).as_posix().split(".", 1)[0] + ".py" not in keep:
            so.unlink()


def _extensions() -> list:
    if os.environ.get("AMCS_COMPILE", "1") == "0" or not (shutil.which("cc") or shutil.which("gcc")):
        _clean()
        return []
    from mypyc.build import mypycify

    extensions = mypycify(["--ignore-missing-imports", "--follow-imports=silent", *COMPILED],
                          opt_level="3")
    _clean(keep=tuple(COMPILED), shared=tuple(e.name for e in extensions if "__mypyc" in e.name))
    return extensions


setup(ext_modules=_extensions())
