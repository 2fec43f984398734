"""The report of bench/gateway.py: the table, the ratios, the targets, a profile's top."""

from __future__ import annotations

import pstats
from pathlib import Path
from statistics import median

import _gateway_setup as S

TARGET_RPS, TARGET_ADDED_MS, TARGET_MIRROR = 0.75, 1.0, 0.9
QUIET = 15.0  # % of a core: above this, other processes' load makes figures incomparable
KINDS = ("peak", "half", "half_own", "mirror", "mirror10")  # timed runs, in report order


def disturbed(r: dict) -> bool:
    """Other processes, or the hypervisor, took a noticeable share of our cores."""
    return max(r["bg_pct"]) >= QUIET or r["steal_pct"] >= QUIET


def verdicts(res: dict) -> dict[str, dict]:
    """The issue's targets, for the runs that were made: value and pass.

    Each target compares runs of the same round (made a few seconds apart) and takes the
    median over the rounds: a comparison of two best-of-N figures pairs the luckiest run of
    each kind, from different minutes. `best` is that comparison, for reference."""
    out: dict[str, dict] = {}
    rounds = res.get("rounds") or {k: {t: [r] for t, r in res[k].items()} for k in KINDS if k in res}

    def judge(name: str, value: float, best: float, ok: bool) -> None:
        out[name] = {"value": value, "best": best, "pass": ok, "rounds": len(rounds["peak"]["ours"])}

    def half_added(half: dict) -> float:
        # The direct path has wrk and the pod on one core, which can make it slower than a
        # proxied one; the lower of direct and nginx is the stricter baseline.
        return (half["ours"]["p99_us"] - min(half["direct"]["p99_us"], half["nginx"]["p99_us"])) / 1000

    peak = rounds["peak"]
    ratio = _median_rps_ratio(peak["ours"], peak["nginx"])
    judge("rps_ratio", ratio, res["peak"]["ours"]["rps"] / res["peak"]["nginx"]["rps"],
          ratio >= TARGET_RPS)
    if "half" in res:
        half = rounds["half"]
        added = median(half_added({t: half[t][i] for t in half}) for i in range(len(half["ours"])))
        judge("p99_added_ms", added, half_added(res["half"]), added <= TARGET_ADDED_MS)
    if "mirror" in res:
        mirrored = _median_rps_ratio(rounds["mirror"]["ours"], peak["ours"])
        judge("mirror_ratio", mirrored, res["mirror"]["ours"]["rps"] / res["peak"]["ours"]["rps"],
              mirrored >= TARGET_MIRROR)
    if "failover" in res:
        bad = res["failover"]["ours"]["non2xx"] + res["failover"]["ours"]["socket_errors"]
        out["failover_failed"] = {"value": bad, "pass": bad == 0}
    return out


def _rps_ratios(a: list[dict], b: list[dict]) -> list[float]:
    """Run by run (round by round): a's req/s over b's."""
    return [x["rps"] / y["rps"] for x, y in zip(a, b, strict=True)]


def _median_rps_ratio(a: list[dict], b: list[dict]) -> float:
    return median(_rps_ratios(a, b))


def _per_cost(without: float, run: dict) -> str:
    """without / with, CPU per request: what mirroring costs the proxy's own core."""
    cost = (run.get("user_us") or 0) + (run.get("sys_us") or 0)
    return f"{without / cost:.2f}x" if cost and without else "-"


def _client_core(run: dict) -> str:
    """How busy the client core was (wrk, the pods, the kernel's work for them), in all."""
    cores = run.get("core_pct")
    return f"{cores[1]:.0f}" if cores else "-"


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


HEADER = ("run       target      req/s  p50 ms  p99 ms p99.9 ms  cpu %  usr us  sys us  bg %   "
          " st %  a/b %  errors")


def _row(run: str, r: dict) -> str:
    share = f"{100 * r['share_a']:.0f}/{100 - 100 * r['share_a']:.0f}" if r["share_a"] else "-"
    return (f"{run:<9} {r['target']:<7} {r['rps']:>9.0f} {_ms(r['p50_us']):>7} "
            f"{_ms(r['p99_us']):>7} {_ms(r['p999_us']):>8} {_opt(r['cpu_pct'], '.0f'):>6} "
            f"{_opt(r['user_us'], '.1f'):>7} {_opt(r['sys_us'], '.1f'):>7} "
            f"{r['bg_pct'][0]:>3.0f}/{r['bg_pct'][1]:<3.0f} {r['steal_pct']:>4.0f} {share:>6} {r['socket_errors'] + r['status']:>7}")


def report(res: dict) -> str:
    s, peak = res["setup"], res["peak"]
    lines = [HEADER]
    for kind in KINDS:
        lines += [_row(kind, r) for r in res.get(kind, {}).values()]
    for name, r in res.get("failover", {}).items():
        lines.append(f"failover  {name:<7} {r['requests']} requests, non-2xx {r['non2xx']}, "
                     f"socket errors {r['socket_errors']} ({S.KILLED.name} killed at "
                     f"{r['killed_at_s']:.1f} s of {s['duration_s']} s; max latency "
                     f"{_ms(r['max_us'])} ms)")
    cost = {t: (peak[t]["user_us"] or 0) + (peak[t]["sys_us"] or 0) for t in ("ours", "nginx")}
    timed = [r for k in KINDS for r in res.get(k, {}).values()]
    busy = sum(disturbed(r) for r in timed)
    redone = sum(r["redone"] for r in timed)
    lines += [
        *([f"WARNING: other processes (bg %) or the hypervisor (st %) took >= {QUIET:g} % of a "
           f"core during {busy} of "
           f"{len(timed)} timed runs: their req/s and latency are not comparable; CPU per "
           "request is the steadier figure (try --wait-quiet 600)"] if busy else []),
        *([f"{redone} disturbed runs were redone (--wait-quiet)"] if redone else []),
        "",
        f"setup: code {s['code']}; {s['cpus']} CPUs, load average {s['load_average']:.1f} at "
        "start. The proxy under "
        f"test is pinned to core {s['proxy_cpu']}; wrk (1 thread, {s['connections']} connections, "
        f"{s['duration_s']} s runs; the paced generator at half load) and the upstream nginx "
        f"pods share core {s['client_cpu']}. "
        f"bg % = other processes' load on core {s['proxy_cpu']} / core {s['client_cpu']} during "
        "the run (beyond the proxy, wrk and the pods); st % = hypervisor steal (the larger of "
        "the two cores); before the runs: "
        + ", ".join(f"core {c} {v:.0f} %" for c, v in s["background_pct"].items()),
        *([f"wake-up lateness of an idle core here (200 µs sleeps, 2 s, before the runs; "
           f"cpuidle haltpoll window {s.get('halt_poll_ns')} ns): "
           + "; ".join(f"core {c} p99 {_ms(w['p99_us'])} ms, p99.9 {_ms(w['p999_us'])} ms, max "
                       f"{_ms(w['max_us'])} ms" for c, w in s["wakeup_lateness"].items())
           + ". A proxied request wakes a sleeping process up to 4 times (client, proxy, pod, "
           "proxy): p99 latencies at half load cannot be much below these, for any proxy"]
          if s.get("wakeup_lateness") else []),
        f"upstream: {', '.join(f'{k} {v} pods' for k, v in s['pods'].items())}; split "
        f"{s['weights']} on both proxies (nginx per-server weights "
        f"{sorted(set(s['nginx_weights'].values()))}); a/b % = what the pods counted; "
        f"{S.SHADOW.name} is the mirror target",
        f"ratio ours/nginx at peak: req/s {peak['ours']['rps'] / peak['nginx']['rps']:.2f}; "
        f"by CPU per request {cost['nginx'] / (cost['ours'] or 1):.2f} "
        f"(ours {cost['ours']:.1f} us, nginx {cost['nginx']:.1f} us)",
    ]
    if "half" in res:
        half = res["half"]
        lines.append(
            f"half load: {res['half_rate']:.0f} req/s (half of ours' peak) for all three, open loop "
            f"(bench/_paced_load.c: a request every 1/rate s, latency from its slot; late sends: "
            f"direct {half['direct'].get('late', 0)}, ours {half['ours'].get('late', 0)}, nginx "
            f"{half['nginx'].get('late', 0)}). p99 added over direct: ours "
            f"{_ms(half['ours']['p99_us'] - half['direct']['p99_us'])} ms, nginx "
            f"{_ms(half['nginx']['p99_us'] - half['direct']['p99_us'])} ms; ours over nginx "
            f"{_ms(half['ours']['p99_us'] - half['nginx']['p99_us'])} ms")
    if "half_own" in res:
        own = res["half_own"]
        lines.append(
            f"half of its own peak: nginx at {res['half_own_rate']:.0f} req/s adds "
            f"{_ms(own['nginx']['p99_us'] - own['direct']['p99_us'])} ms p99 over direct at that "
            f"rate (CPU {_opt(own['nginx']['cpu_pct'], '.0f')} %); ours at half of its own "
            f"peak is the half row (CPU {_opt(res['half']['ours']['cpu_pct'], '.0f')} %)")
    if "mirror" in res:
        m, m10 = res["mirror"], res["mirror10"]["ours"]
        lines.append(
            f"mirroring 100 %: ours {m['ours']['rps'] / peak['ours']['rps']:.2f}x of without "
            f"({100 * (m['ours']['mirrored'] or 0):.1f} % of requests reached {S.SHADOW.name}), "
            f"nginx {m['nginx']['rps'] / peak['nginx']['rps']:.2f}x "
            f"({100 * (m['nginx']['mirrored'] or 0):.1f} %); mirroring 10 %: ours "
            f"{m10['rps'] / peak['ours']['rps']:.2f}x ({100 * (m10['mirrored'] or 0):.1f} %). "
            f"By CPU per request ours with 100 % is {_per_cost(cost['ours'], m['ours'])} of "
            f"without, its core {_opt(m['ours']['cpu_pct'], '.0f')} % busy; the client core "
            f"(wrk, the pods and the mirror pod) {_client_core(m['ours'])} % busy, "
            f"{_client_core(peak['ours'])} % without mirroring (near 100 %, it set the pace)")
    mt = res["metrics"]
    lines.append(
        f"our metrics after the runs: {mt.get('gateway_requests_total', 0):.0f} requests, "
        f"{mt.get('gateway_retries_total', 0):.0f} retries, "
        f"{mt.get('gateway_upstream_errors_total', 0):.0f} upstream errors, mirror copies: "
        + (", ".join(f"{k.split(':', 1)[1]} {v:.0f}" for k, v in sorted(mt.items())
                     if k.startswith("gateway_mirror_requests_total:")) or "none"))
    v, ok = res["verdicts"], {True: "PASS", False: "FAIL"}
    texts = {
        "rps_ratio": lambda x: f"ours >= {TARGET_RPS}x nginx's req/s: {x:.2f}x",
        "p99_added_ms": lambda x: f"p99 added at half load <= {TARGET_ADDED_MS:g} ms "
                                  f"(over the lower of direct and nginx): {x:+.2f} ms",
        "mirror_ratio": lambda x: f"req/s with mirroring (100 %) >= {TARGET_MIRROR}x without: "
                                  f"{x:.2f}x",
        "failover_failed": lambda x: f"failover, non-2xx + socket errors = 0 (item 9): {x}",
    }
    lines += [f"target: {texts[k](x['value'])} {ok[x['pass']]}"
              + (f" (median of {x['rounds']} rounds; best-of figures: {texts[k](x['best']).rsplit(': ', 1)[1]})"
                 if x.get("rounds", 1) > 1 else "") for k, x in v.items()]
    return "\n".join(lines)


def ab_report(res: dict) -> str:
    """--ab: per pair the medians of its runs and of its per-round ratios to the first pair."""
    runs = res["ab"]
    first = next(iter(runs.values()))
    lines = ["pair                    runs  req/s med  usr us  sys us  cpu %  client %  "
             "ratio med  ratio per round"]
    for pair, rs in runs.items():
        ratios = _rps_ratios(rs, first)
        lines.append(
            f"{pair:<22} {len(rs):>5} {median(r['rps'] for r in rs):>10.0f} "
            f"{_opt(_median_of(rs, 'user_us'), '.1f'):>7} {_opt(_median_of(rs, 'sys_us'), '.1f'):>7} "
            f"{_opt(_median_of(rs, 'cpu_pct'), '.0f'):>6} "
            f"{_opt(median(r['core_pct'][1] for r in rs), '.0f'):>9} {median(ratios):>10.3f}  "
            + " ".join(f"{x:.2f}" for x in ratios))
    busy = sum(disturbed(r) for rs in runs.values() for r in rs)
    if busy:
        lines.append(f"WARNING: {busy} runs were disturbed by other processes or the hypervisor")
    s = res["setup"]
    lines.append(f"setup: code {s['code']}; {s['rounds']} rounds of {s['duration_s']} s runs, the "
                 f"order reversed every other round; proxy on core {s['proxy_cpu']}, wrk and the "
                 f"pods on core {s['client_cpu']}")
    ours, mirror, peer = f"ours:{S.HOST}", f"ours:{S.MIRROR_HOST}", f"nginx:{S.HOST}"
    for a, b, target, what in ((mirror, ours, TARGET_MIRROR, "req/s with mirroring (100 %) / without"),
                               (ours, peer, TARGET_RPS, "ours / nginx req/s")):
        if a in runs and b in runs:
            x = _median_rps_ratio(runs[a], runs[b])
            lines.append(f"target: {what}, median of interleaved rounds: {x:.3f} (>= {target}) "
                         + ("PASS" if x >= target else "FAIL"))
    return "\n".join(lines)


def _median_of(rs: list[dict], key: str) -> float | None:
    values = [r[key] for r in rs if r[key] is not None]
    return median(values) if values else None


def profile_top(path: Path, count: int = 25) -> str:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime")
    width, items = stats.total_tt, list(stats.stats.items())  # type: ignore[attr-defined]
    items.sort(key=lambda kv: kv[1][2], reverse=True)
    out = [f"profile (cProfile, ours, while serving; {width:.1f} s in total), top {count} by own time:",
           "  own s   cum s    calls  function"]
    for (file, line, func), (_cc, calls, tt, ct, _callers) in items[:count]:
        where = f"{Path(file).name}:{line}" if line else file
        out.append(f"{tt:7.2f} {ct:7.2f} {calls:8d}  {func} ({where})")
    return "\n".join(out)
