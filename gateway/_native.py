"""Which gateway modules run compiled (mypyc, see setup.py), and a guard against stale ones.

A compiled module older than its source would silently run the old code: importing the
gateway fails instead, naming the files and the command that rebuilds them.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def compiled_modules(package: Path = PACKAGE) -> list[str]:
    """Dotted names of the package's modules that have a compiled extension."""
    return sorted(".".join((package.name, *so.relative_to(package).with_name(so.name.split(".", 1)[0]).parts))
                  for so in package.rglob("*.so"))


def stale_sources(package: Path = PACKAGE) -> list[str]:
    """Sources changed after their extension was built (their edits would not run)."""
    out = []
    for so in package.rglob("*.so"):
        src = so.with_name(so.name.split(".", 1)[0] + ".py")
        if src.exists() and src.stat().st_mtime > so.stat().st_mtime:
            out.append(str(src.relative_to(package.parent)))
    return sorted(out)


def check_fresh() -> None:
    stale = stale_sources()
    if stale:
        raise ImportError(
            f"{', '.join(stale)} changed after the gateway was compiled; rebuild with "
            "`./dev build` (pip install -e .), or go interpreted with `AMCS_COMPILE=0 ./dev build`")
