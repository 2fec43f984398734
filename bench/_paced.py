"""An open-loop, constant-rate load generator for bench/ (bench/_paced_load.c, built with gcc on
first use): what wrk2 does, which Debian does not package.

Why: wrk paced with a Lua delay() sends in 1 ms bursts, and the p99 it measures at half load
is mostly its own burstiness. This one sends every request at its slot t0 + i/rate (sub-ms
timers) and measures latency from the slot (coordinated omission corrected, `p99_us`) as
well as from the actual send (`sent_p99_us`). `run()` returns wrk-compatible keys (the same
as `_gateway_setup.parse_wrk`: requests, duration_us, rps, socket_errors, non2xx, p50_us..).

    python bench/_paced.py --url http://127.0.0.1:8080/ --host bench.local --rate 1000 --duration 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))  # last: bench/dns.py must not hide the dns package

from _gateway_setup import die_with_parent, parse_result, pinned  # noqa: E402

SOURCE = HERE / "_paced_load.c"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-std=gnu11")


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "amcs-bench"


def build(cache_dir: Path | None = None, *, source: Path = SOURCE) -> Path:
    """The compiled generator in the cache dir, (re)built with gcc when missing or older than
    the source. Built under a temporary name and renamed, so concurrent builds never see a
    half-written binary."""
    cache = cache_dir if cache_dir is not None else default_cache()
    binary = cache / source.stem.lstrip("_")
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the paced load generator (Debian package gcc)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f".{binary.name}.{os.getpid()}.tmp")
    done = subprocess.run([gcc, *CFLAGS, "-o", str(tmp), str(source), "-lm"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"gcc could not build {source} (exit {done.returncode}):\n"
                           f"{done.stderr.strip()}")
    os.replace(tmp, binary)
    return binary


def parse_paced(out: str) -> dict:
    """The PACEDJSON line, with `rps` and `socket_errors` derived as parse_wrk does."""
    return parse_result(out, "PACEDJSON", "the paced load generator")


def command(binary: Path, url: str, host: str, rate: float, connections: int, seconds: float,
            timeout_ms: int = 2000, warmup: float = 0.0) -> list[str]:
    """The generator's command line for an http:// URL (a host name is resolved here: the
    generator takes an IP address)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url}: only http://HOST[:PORT]/PATH URLs are supported")
    port = parts.port or 80
    addr = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)[0][4][0]
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return [str(binary), "--addr", str(addr), "--port", str(port), "--host-header", host,
            "--path", path, "--rate", repr(float(rate)), "--connections", str(connections),
            "--duration", repr(float(seconds)), "--timeout-ms", str(timeout_ms),
            "--warmup", repr(float(warmup))]


def run(url: str, host: str, rate: float, connections: int, seconds: float,
        cpu: int | None = None, timeout_ms: int = 2000, warmup: float = 0.0,
        cache_dir: Path | None = None) -> dict:
    """`rate` requests/s in total for `seconds` (after `warmup` seconds, sent but not
    recorded) over `connections` keep-alive connections; pinned to core `cpu` if given.
    Raises RuntimeError with the generator's message when it fails (e.g. cannot connect)."""
    cmd = pinned(cpu, command(build(cache_dir), url, host, rate, connections, seconds,
                              timeout_ms, warmup))
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=die_with_parent,
                          timeout=warmup + seconds + timeout_ms / 1000 + 30)
    if done.returncode != 0:
        raise RuntimeError(f"the paced load generator failed (exit {done.returncode}): "
                           f"{done.stderr.strip() or done.stdout.strip()}")
    return parse_paced(done.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="http://IP:PORT/PATH")
    p.add_argument("--host", help="Host header (default: the URL's host)")
    p.add_argument("--rate", type=float, required=True, help="requests/s in total")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--cpu", type=int, help="pin the generator to this core (taskset)")
    p.add_argument("--timeout-ms", type=int, default=2000)
    p.add_argument("--warmup", type=float, default=0.0, help="seconds sent, not recorded")
    args = p.parse_args(argv)
    host = args.host or urlsplit(args.url).netloc
    try:
        res = run(args.url, host, args.rate, args.connections, args.duration, cpu=args.cpu,
                  timeout_ms=args.timeout_ms, warmup=args.warmup)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"bench/_paced.py: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
