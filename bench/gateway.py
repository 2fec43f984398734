"""Gateway benchmark (issue 4 item 18): wrk against our gateway and against nginx proxying the
same upstream, in the same run.

Both proxies serve the same thing: Host `bench.local` routed to the `web` Service of two
member clusters split 50/50 by cluster weight (cluster-a has 2 pods, cluster-b 3), and Host
`mirror.local`, the same plus a 100 % mirror to a third cluster. Ours runs with its metrics
and admin port on. The upstream "pods" are nginx processes, one per cluster. Each proxy in
turn is driven by wrk; the proxy is pinned to core 0 alone, wrk and the upstream nginx share
core 1 (the same for both proxies). Runs: peak (flat out), half load (an open-loop generator,
bench/_paced_load.c, at half of ours' peak, against each proxy and the upstream direct:
latency added = p99 through the proxy - p99 direct), mirroring, and failover (cluster-a's nginx killed mid-run; non-2xx
counted). Targets: ours >= 0.75x nginx's req/s; p99 added <= 1 ms at half load; req/s with
mirroring >= 0.9x without.

    python bench/gateway.py [--duration 10] [--connections 50] [--rounds 1] [--json out.json]
    python bench/gateway.py --profile gw.pstats    # ours under cProfile (slower): top functions
    python bench/gateway.py --ab ours:bench.local,ours:mirror.local --rounds 6 --duration 2
                                                   # interleaved medians of two (or more) runs
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _gateway_setup as S  # noqa: E402
import _paced  # noqa: E402
from _gateway_report import (  # noqa: E402
    QUIET,
    ab_report,
    disturbed,
    profile_top,
    report,
    verdicts,
)

RUNS = ("half", "mirror", "failover")


def tool(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.procs = S.Procs(work)
        self.nginx = tool("nginx") or "nginx"
        self.urls: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.quiet_until = time.monotonic() + args.wait_quiet

    # -- processes -------------------------------------------------------------------------

    def start_cluster(self, c: S.Cluster) -> None:
        for addr in [(a, S.POD_PORT) for a in c.addresses] + [(f"127.77.{c.net}.1", S.STATUS_PORT)]:
            S.ensure_free(addr)
        conf = S.upstream_conf(self.work, c)
        self.procs.start(c.name, S.pinned(self.args.client_cpu, S.nginx_cmd(self.nginx, conf)))
        for addr in c.addresses:
            S.wait_listening((addr, S.POD_PORT))
        S.wait_listening((f"127.77.{c.net}.1", S.STATUS_PORT))

    def start(self) -> None:
        for c in S.CLUSTERS:
            self.start_cluster(c)
        self.urls["direct"] = f"http://{S.PRIMARY[0].addresses[0]}:{S.POD_PORT}/"
        fleet = S.write_fleet(self.work)
        cmd = [sys.executable, str(HERE / "_gateway_runner.py"), "--fleet", str(fleet),
               "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        if self.args.profile:
            cmd += ["--profile", str(self.args.profile)]
        if self.args.busy_poll_us:
            cmd += ["--busy-poll-us", str(self.args.busy_poll_us)]
        ours = self.procs.start("ours", S.pinned(self.args.proxy_cpu, cmd), stdout=subprocess.PIPE)
        line = S.read_line(ours, 30.0)
        if not line.startswith("READY "):
            raise RuntimeError(f"our gateway did not start:\n{self.procs.stderr_tail('ours')}")
        port, admin = (int(x) for x in line.split()[1:3])
        self.urls["ours"], self.admin = f"http://127.0.0.1:{port}/", admin
        self.pids["ours"] = ours.pid
        port = S.free_port()
        peer = self.procs.start("nginx", S.pinned(self.args.proxy_cpu, S.nginx_cmd(
            self.nginx, S.peer_conf(self.work, port))))
        S.wait_listening(("127.0.0.1", port))
        self.urls["nginx"], self.pids["nginx"] = f"http://127.0.0.1:{port}/", peer.pid

    def check_answers(self) -> None:
        """Before timing: both proxies route both hosts to a primary cluster's pods."""
        bodies = {c.body for c in S.PRIMARY}
        hosts = {"ours": (S.HOST, S.MIRROR_HOST, S.MIRROR10_HOST), "nginx": (S.HOST, S.MIRROR_HOST)}
        for name in ("ours", "nginx"):
            for host in hosts[name]:
                for _ in range(len(bodies) * 2):
                    status, body = get(self.urls[name], host)
                    if status != 200 or body not in bodies:
                        raise RuntimeError(f"{name} {host}: {status} {body[:200]!r}")
            status, _ = get(self.urls[name], "nobody.local")
            if status != 404:
                raise RuntimeError(f"{name}: an unknown host got {status}, not 404")

    # -- one wrk run -----------------------------------------------------------------------

    def wrk_cmd(self, target: str, host: str, script: Path, seconds: int) -> list[str]:
        return S.pinned(self.args.client_cpu, [
            "wrk", "-t1", f"-c{self.args.connections}", f"-d{seconds}s", "--timeout", "2s",
            "-s", str(script), "-H", f"Host: {host}", self.urls[target]])

    def measure(self, target: str, **kw) -> dict:
        """One run; with --wait-quiet, wait for quiet cores first and redo a run (not a
        failover) that other processes disturbed, while the waiting budget lasts."""
        redone = 0
        while True:
            self.wait_quiet()
            res = self.measure_once(target, **kw)
            if (kw.get("failover") or not disturbed(res) or time.monotonic() >= self.quiet_until):
                res["redone"] = redone
                return res
            redone += 1

    def wait_quiet(self) -> None:
        while time.monotonic() < self.quiet_until:
            if max(self.sample_background(0.5).values()) < QUIET:
                return

    def sample_background(self, seconds: float) -> dict[int, float]:
        cores = (self.args.proxy_cpu, self.args.client_cpu)
        before = {c: S.core_times(c)[0] for c in cores}
        time.sleep(seconds)
        return {c: round(100 * (S.core_times(c)[0] - before[c]) / seconds, 1) for c in cores}

    def _client_side_cpu(self) -> float:
        """wrk (reaped children) plus the upstream nginx processes: ours on the client core."""
        total = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
        for c in S.CLUSTERS:
            proc = self.procs.running.get(c.name)
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError):
                    total += sum(S.cpu_times(proc.pid))
        return total

    def measure_once(self, target: str, host: str = S.HOST, rate: float | None = None,
                     failover: bool = False) -> dict:
        """One wrk run; with the proxy's user/system CPU per request, other processes' load
        on both cores meanwhile (bg %), and what each upstream cluster counted."""
        if failover and S.KILLED.name not in self.procs.running:
            self.start_cluster(S.KILLED)
        seconds, pid = self.args.duration, self.pids.get(target)
        pc, cc = self.args.proxy_cpu, self.args.client_cpu
        if rate:  # open loop, a request every 1/rate s, latency from each one's slot
            cmd = S.pinned(cc, _paced.command(_paced.build(), self.urls[target], host, rate,
                                              self.args.connections, seconds))
        else:
            cmd = self.wrk_cmd(target, host, S.wrk_script(self.work, count_status=failover), seconds)
        before = {c.name: S.stub_requests(c) for c in S.CLUSTERS}
        (u0, s0), mine0 = S.cpu_times(pid), self._client_side_cpu()
        times0, t0 = (S.core_times(pc), S.core_times(cc)), time.monotonic()
        wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=S.die_with_parent)
        killed_at = None
        if failover:
            time.sleep(seconds * self.args.failover_at)
            self.procs.kill(S.KILLED.name)
            killed_at = time.monotonic() - t0
        out, _ = wrk.communicate(timeout=seconds + 30)
        wall = time.monotonic() - t0
        times = (S.core_times(pc), S.core_times(cc))
        busy = (times[0][0] - times0[0][0], times[1][0] - times0[1][0])
        steal = max(times[i][1] - times0[i][1] for i in (0, 1))
        (u1, s1), mine = S.cpu_times(pid), self._client_side_cpu() - mine0
        res = _paced.parse_paced(out) if rate else S.parse_wrk(out)
        after = {c.name: S.stub_requests(c) for c in S.CLUSTERS}
        got = {n: after[n] - before[n] - 1  # the second status request counts itself
               if after[n] is not None and before[n] is not None else None for n in before}
        primary = sum(got[c.name] or 0 for c in S.PRIMARY)
        n, proxy = res["requests"] or 1, (u1 - u0) + (s1 - s0)
        res.update(target=target, host=host, rate=rate, wall_s=wall, upstream=got,
                   killed_at_s=killed_at,
                   cpu_pct=100 * proxy / wall if pid else None,
                   user_us=1e6 * (u1 - u0) / n if pid else None,
                   sys_us=1e6 * (s1 - s0) / n if pid else None,
                   steal_pct=100 * steal / wall,
                   # everything on each core (/proc/stat ticks: a short run can read a tick over)
                   core_pct=[min(100.0, 100 * b / wall) for b in busy],
                   bg_pct=(max(0.0, 100 * (busy[0] - proxy) / wall),
                           max(0.0, 100 * (busy[1] - mine) / wall)),
                   share_a=(got[S.PRIMARY[0].name] or 0) / primary if primary else None,
                   mirrored=(got[S.SHADOW.name] or 0) / primary if primary else None)
        return res

    # -- the whole benchmark ---------------------------------------------------------------

    def run(self) -> dict:
        self.start()
        self.check_answers()
        runs, rounds = self.args.runs, range(self.args.rounds)
        if not self.args.no_warmup:
            for target in ("ours", "nginx"):  # open upstream connections, warm caches
                self.measure_short(target)

        res: dict = {"setup": self.setup(), "rounds": {}}

        def best(plan: list[tuple[str, tuple[str, ...], dict]]) -> dict[str, dict[str, dict]]:
            """Best of the rounds for each (kind, target), every round running the whole plan
            in turn, so that drifting machine speed hits every figure alike (a ratio of two
            figures from different minutes is otherwise mostly that drift). Every round is
            kept in res["rounds"]: the targets are judged on per-round comparisons."""
            got: dict[str, dict[str, list[dict]]] = {k: {t: [] for t in ts} for k, ts, _ in plan}
            for _ in rounds:
                for kind, targets, kw in plan:
                    for t in targets:
                        got[kind][t].append(self.measure(t, **kw))
            res["rounds"].update(got)
            def key(r: dict) -> float:  # paced runs: the lowest p99; others: the most req/s
                return -r["p99_us"] if r["rate"] else r["rps"]
            return {k: {t: max(rs, key=key) for t, rs in by.items()} for k, by in got.items()}

        res["setup"]["background_pct"] = self.background()
        res["setup"]["wakeup_lateness"] = S.wakeup_lateness(
            (self.args.proxy_cpu, self.args.client_cpu))
        plan = [("peak", ("direct", "ours", "nginx"), {})]
        if "mirror" in runs:
            plan += [("mirror", ("ours", "nginx"), {"host": S.MIRROR_HOST}),
                     ("mirror10", ("ours",), {"host": S.MIRROR10_HOST})]
        res.update(best(plan))
        if "half" in runs:
            res["half_rate"] = rate = res["peak"]["ours"]["rps"] / 2
            res.update(best([("half", ("direct", "ours", "nginx"), {"rate": rate})]))
            # The same question asked of nginx: half of *its own* peak, where a proxy's core is
            # as busy as ours is in the half row (for comparison; the target is the half row).
            res["half_own_rate"] = own = res["peak"]["nginx"]["rps"] / 2
            res.update(best([("half_own", ("direct", "nginx"), {"rate": own})]))
        if "failover" in runs:
            res["failover"] = {}
            for target in ("ours", "nginx"):
                if S.KILLED.name not in self.procs.running:
                    self.start_cluster(S.KILLED)
                res["failover"][target] = self.measure(target, failover=True)
        res["metrics"] = self.scrape()
        res["verdicts"] = verdicts(res)
        return res

    def run_ab(self, pairs: list[tuple[str, str]]) -> dict:
        """Interleaved rounds: each round runs every (target, host) pair once, in alternating
        order, so that a comparison is the median of same-minute ratios (best-of-N compares
        the luckiest run of each kind)."""
        self.start()
        self.check_answers()
        if not self.args.no_warmup:
            for target in sorted({t for t, _ in pairs} - {"direct"}):
                self.measure_short(target)
        runs: dict[str, list[dict]] = {f"{t}:{h}": [] for t, h in pairs}
        for n in range(self.args.rounds):
            for target, host in (pairs if n % 2 == 0 else pairs[::-1]):
                runs[f"{target}:{host}"].append(self.measure(target, host=host))
        return {"setup": self.setup(), "ab": runs}

    def background(self) -> dict[int, float]:
        """Other processes' load on our two cores (1 s, everything of ours idle), after
        waiting for quiet if asked to."""
        self.wait_quiet()
        return self.sample_background(1.0)

    def measure_short(self, target: str) -> None:
        script = S.wrk_script(self.work)
        subprocess.run(self.wrk_cmd(target, S.HOST, script, 1), capture_output=True, timeout=30,
                       preexec_fn=S.die_with_parent)

    def scrape(self) -> dict[str, float]:
        """Our gateway's own counters after the runs (proof that metrics were on)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        sums: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name.endswith("_total"):
                key = name
                if name == "gateway_mirror_requests_total":
                    key += ":" + line.split('outcome="', 1)[1].split('"', 1)[0]
                sums[key] = sums.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return sums

    def setup(self) -> dict:
        return {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "code": code_version(),
                "proxy_cpu": self.args.proxy_cpu, "client_cpu": self.args.client_cpu,
                "connections": self.args.connections, "duration_s": self.args.duration,
                "rounds": self.args.rounds, "weights": S.weights_annotation(),
                "nginx_weights": S.pod_weights(),
                "pods": {c.name: len(c.addresses) for c in S.CLUSTERS}}


def code_version() -> str:
    """The commit measured, and whether gateway/ had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted gateway/ changes" if git("status", "--porcelain", "gateway") else "")


def get(url: str, host: str) -> tuple[int, str]:
    hostport = url.split("//", 1)[1].rstrip("/")
    conn = http.client.HTTPConnection(hostport, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


# -- the report ----------------------------------------------------------------------------


AB_TARGETS = ("ours", "nginx", "direct")
AB_HOSTS = (S.HOST, S.MIRROR_HOST, S.MIRROR10_HOST)


def ab_pairs(value: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, value.split(",")):
        target, _, host = item.partition(":")
        if target not in AB_TARGETS or host not in AB_HOSTS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: want TARGET:HOST, a target of {', '.join(AB_TARGETS)} and a host of "
                f"{', '.join(AB_HOSTS)}")
        if (target, host) == ("nginx", S.MIRROR10_HOST):
            raise argparse.ArgumentTypeError(f"{item!r}: the nginx peer has no 10 % mirror host")
        pairs.append((target, host))
    if len(pairs) < 2:
        raise argparse.ArgumentTypeError(f"{value!r}: name at least two pairs to compare")
    return pairs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=50, help="wrk connections")
    p.add_argument("--rounds", type=int, help="best of N (default 1; failover: once); with "
                   "--ab, the interleaved rounds (default 6)")
    p.add_argument("--runs", type=lambda v: set(filter(None, v.split(","))), default=set(RUNS),
                   help=f"which runs besides peak (comma separated; default: {','.join(RUNS)})")
    p.add_argument("--failover-at", type=float, default=0.4,
                   help="kill cluster-a at this fraction of the failover run")
    p.add_argument("--proxy-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--no-warmup", action="store_true", help="skip the 1 s warm-up per proxy")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help=f"budget for waiting until other processes use < {QUIET:g} %% of each "
                   "core before a run, and for redoing runs they disturbed")
    p.add_argument("--busy-poll-us", type=float, default=0.0, metavar="US",
                   help="run ours with busy polling for this window (its --busy-poll-us; "
                   "default off, like the gateway's default)")
    p.add_argument("--halt-poll-ns", type=int, metavar="NS",
                   help="set the guest's cpuidle haltpoll window for the run (restored after): a "
                   "VM whose idle vCPUs halt at once wakes them slowly, which shows in every "
                   "proxy's tail latency at half load (see bench/README.md)")
    p.add_argument("--ab", type=ab_pairs, metavar="TARGET:HOST,...",
                   help="instead of the benchmark: interleaved rounds of these pairs (targets "
                   f"{', '.join(AB_TARGETS)}; hosts {', '.join(AB_HOSTS)}), reporting medians "
                   "and each pair's median ratio to the first; --rounds sets the rounds. "
                   f"Example: --ab ours:{S.HOST},ours:{S.MIRROR_HOST} --rounds 6 --duration 2")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--profile", type=Path, help="run ours under cProfile, write stats here")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 6 if args.ab else 1
    if args.rounds < 1:
        p.error(f"--rounds: {args.rounds}: must be >= 1")
    if args.runs - set(RUNS):
        p.error(f"--runs: unknown {', '.join(sorted(args.runs - set(RUNS)))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        S.halt_poll_check(args.halt_poll_ns)
    except RuntimeError as exc:
        print(f"bench/gateway.py: --halt-poll-ns: {exc}", file=sys.stderr)
        return 2
    missing = [t for t in ("wrk", "nginx", "taskset") if not tool(t)]
    if missing:
        print(f"bench/gateway.py: missing {', '.join(missing)} (Debian packages wrk, nginx, "
              "util-linux)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp, \
            S.halt_poll(args.halt_poll_ns) as halt_poll_ns:
        bench = Bench(args, Path(tmp))
        try:
            res = bench.run_ab(args.ab) if args.ab else bench.run()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"bench/gateway.py: {exc}", file=sys.stderr)
            return 1
        finally:
            bench.procs.kill("ours", signal.SIGTERM, wait=20.0)  # cProfile writes on exit
            bench.procs.close()
        res["setup"]["halt_poll_ns"] = halt_poll_ns
        res["setup"]["busy_poll_us"] = args.busy_poll_us
    print(ab_report(res) if args.ab else report(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if args.profile:
        print(profile_top(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
