"""DNS benchmark (issue 3 item 13): clusterset_dns against knot and a naive dnslib server.

Each server in turn, alone and pinned to one core (taskset -c 0), serves the same names:
ours from a fleet folder (generated: `--services` ServiceImports as mcs_controller writes
them; or `--fleet DIR --cluster NAME`), knot from a zone file holding exactly the records
ours answered, the naive server (parse + build per query with dnslib, in this file) from
that zone file too. dnsperf, pinned to another core, replays the same query file (A, AAAA
and SRV of every import: answers a server can cache) twice per server: flat out (peak qps),
then at 80% of OUR peak rate (mean latency at equal load). Targets: ours >= 0.9x knot's qps;
ours' mean latency at 80% < 2x knot's.

    python bench/dns.py [--services 1000] [--duration 10] [--rounds 1] [--json out.json]
    python bench/dns.py --fleet tests/dnsfleet --cluster c1 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# `python bench/dns.py` puts bench/ first on sys.path, where this file would shadow dnspython
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests"))  # netkit: loopback ports, as the tests pick them

import dns.exception  # noqa: E402
import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import yaml  # noqa: E402
from netkit import free_port  # noqa: E402

from mcs_controller.model import labels as L  # noqa: E402
from mcs_controller.model.desired import export_slice_labels, import_labels  # noqa: E402
from mcs_controller.model.slices import mirror_slices  # noqa: E402

ZONE = "clusterset.local."
NS = "bench"
TARGET_QPS_RATIO, TARGET_LATENCY_RATIO, LOAD_SHARE = 0.9, 2.0, 0.8
LISTENING = re.compile(r"listening on udp\S* (\S+):(\d+)")


def tool(name: str) -> str | None:
    found = shutil.which(name)
    return found or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None and tool("taskset") else cmd


# -- the names ---------------------------------------------------------------------------


def generate_fleet(root: Path, services: int) -> tuple[Path, str]:
    """One consumer cluster `bench`: ClusterSetIP (every 4th dual-stack) and Headless (every
    5th, 3 ready endpoints with hostnames) imports from cluster west, as the controller writes."""
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}]
    for i in range(services):
        name, headless, dual = f"svc-{i:04d}", i % 5 == 4, i % 4 == 1
        spec: dict = {"ports": [{"protocol": "TCP", "port": 80, "name": "http"}],
                      "type": "Headless" if headless else "ClusterSetIP", "sessionAffinity": "None"}
        if not headless:
            spec["ips"] = [f"10.100.{i >> 8}.{i & 255}"] + ([f"fd00:10:96::{i:x}"] if dual else [])
            spec["ipFamilies"] = ["IPv4", "IPv6"][: len(spec["ips"])]
        docs.append({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
                     "metadata": {"name": name, "namespace": NS, "labels": import_labels(name)},
                     "spec": spec, "status": {"clusters": [{"cluster": "west"}]}})
        endpoints = [{"addresses": [f"10.1.{i >> 6}.{(i & 63) * 4 + k}"],
                      "conditions": {"ready": True, "serving": True, "terminating": False},
                      **({"hostname": f"{name}-{k}"} if headless else {})} for k in range(3)]
        source = {"addressType": "IPv4", "endpoints": endpoints,
                  "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
        docs += mirror_slices(source_slices=[source], source_cluster="west", namespace=NS,
                              name_prefix=L.shadow_service_name(name),
                              labels=export_slice_labels(name))
    folder = root / "fleet" / "bench"
    folder.mkdir(parents=True)
    (folder / "imports.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return folder.parent, "bench"


def questions(fleet: Path, cluster: str) -> list[tuple[str, str]]:
    """A, AAAA and one SRV per named port of every ServiceImport in the cluster's folder."""
    out = []
    for path in sorted((fleet / cluster).rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "ServiceImport":
                continue
            base = f"{doc['metadata']['name']}.{doc['metadata']['namespace']}.svc.{ZONE}"
            out += [(base, "A"), (base, "AAAA")]
            out += [(f"_{p['name']}._{p.get('protocol', 'TCP').lower()}.{base}", "SRV")
                    for p in doc["spec"].get("ports") or [] if p.get("name")]
    return out


def ask(port: int, name: str, rdtype: str, timeout: float = 2.0) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)
    if reply.flags & dns.flags.TC:
        reply = dns.query.tcp(query, "127.0.0.1", port=port, timeout=timeout)
    return reply


def summary(reply: dns.message.Message) -> tuple:
    """What must be equal between servers: rcode, answer and additional records, SOA or not."""
    def rrs(section: list) -> frozenset:
        return frozenset((str(r.name).lower(), r.rdtype, rd.to_text().lower()) for r in section for rd in r)
    return (reply.rcode(), rrs(reply.answer), rrs(reply.additional),
            frozenset(r.rdtype for r in reply.authority))


def zone_from(port: int, qs: list[tuple[str, str]]) -> tuple[str, dict]:
    """A zone file with every record ours answered (plus apex SOA/NS, glue, dns-version)."""
    lines, answers, wanted = set(), {}, set(qs)
    for name, rdtype in [*qs, (ZONE, "SOA"), (ZONE, "NS"), ("ns.dns." + ZONE, "A"),
                         ("dns-version." + ZONE, "TXT")]:
        reply = ask(port, name, rdtype)
        if (name, rdtype) in wanted:  # the apex extras are not in the query mix
            answers[(name, rdtype)] = summary(reply)
        for rrset in reply.answer + reply.additional:
            lines.update(rrset.to_text().splitlines())
    soa = [line for line in lines if " SOA " in line]
    assert soa, "no apex SOA from our server"
    return "".join(line + "\n" for line in soa + sorted(set(lines) - set(soa))), answers


# -- the naive peer ----------------------------------------------------------------------


def serve_naive(zone_file: str, port: int) -> None:
    """dnslib parse + build per query: the plain-Python baseline (asyncio, UDP)."""
    import asyncio

    from dnslib import QTYPE, RCODE, RR, DNSRecord

    records: dict[tuple[str, int], list] = {}
    for rr in RR.fromZone(Path(zone_file).read_text()):
        records.setdefault((str(rr.rname).lower(), rr.rtype), []).append(rr)
    names = {n for n, _ in records}
    existing = names | {n.split(".", i)[-1] for n in names for i in range(1, n.count("."))}
    soa = records[(ZONE, QTYPE.SOA)]

    def answer(data: bytes) -> bytes:
        query = DNSRecord.parse(data)
        reply, qname = query.reply(), str(query.q.qname).lower()
        if not qname.endswith(ZONE):
            reply.header.rcode = RCODE.REFUSED
            return reply.pack()
        for rr in records.get((qname, query.q.qtype), []):
            reply.add_answer(RR(query.q.qname, rr.rtype, rdata=rr.rdata, ttl=rr.ttl))
            if rr.rtype == QTYPE.SRV:
                for t in (QTYPE.A, QTYPE.AAAA):
                    for glue in records.get((str(rr.rdata.target).lower(), t), []):
                        reply.add_ar(glue)
        if not reply.rr:
            reply.header.rcode = RCODE.NOERROR if qname in existing else RCODE.NXDOMAIN
            reply.add_auth(*soa)
        return reply.pack()

    class Protocol(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            try:
                self.transport.sendto(answer(data), addr)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - a bad packet must not stop the baseline
                pass

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", port))
        print(f"naive listening on udp 127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


# -- processes ---------------------------------------------------------------------------


class Server:
    """One server process; `port` once it answers."""

    def __init__(self, name: str, cmd: list[str], log: Path, port: int | None = None) -> None:
        self.name, self.port, self.log = name, port, log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)

        def drain() -> None:  # ours prints its port; then keep the pipe from filling up
            for line in self.proc.stdout or []:
                match = LISTENING.search(line)
                if match and self.port is None:
                    self.port = int(match.group(2))

        threading.Thread(target=drain, daemon=True).start()
        self.wait_answering()

    def wait_answering(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-1500:]}")
            if self.port:
                try:
                    if ask(self.port, ZONE, "SOA", timeout=0.5).rcode() == dns.rcode.NOERROR:
                        return
                except (OSError, dns.exception.DNSException):
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not answering in {within}s: {self.log.read_text()[-1500:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start(name: str, tmp: Path, args: argparse.Namespace, zone_file: Path) -> Server:
    if name == "ours":
        cmd = [sys.executable, "-m", "clusterset_dns", "--fleet", str(args.fleet), "--cluster",
               args.cluster, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
               "--log-level", "warning"]
        return Server(name, pinned(args.server_cpu, cmd), tmp / "ours.log")
    port = free_port(udp=True)
    if name == "naive":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-naive", str(zone_file),
               "--port", str(port)]
        return Server(name, pinned(args.server_cpu, cmd), tmp / "naive.log", port)
    knot = tmp / "knot"
    shutil.rmtree(knot, ignore_errors=True)
    knot.mkdir()
    # one worker of each kind: knot, like the others, gets a single core
    (knot / "knot.conf").write_text(f"""server:
    rundir: "{knot}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{knot}/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{knot}"
    journal-content: none
    zonefile-sync: -1
zone:
  - domain: {ZONE}
    file: "{zone_file}"
""")
    return Server(name, pinned(args.server_cpu, [tool("knotd") or "knotd", "-c",
                                                 str(knot / "knot.conf")]), tmp / "knot.log", port)


def dnsperf(port: int, query_file: Path, args: argparse.Namespace, *, seconds: float,
            rate: float | None = None, passes: int | None = None) -> dict:
    cmd = [tool("dnsperf") or "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(query_file),
           "-c", str(args.clients), "-q", str(args.outstanding), "-t", "2", "-l", str(seconds)]
    if rate:
        cmd += ["-Q", str(int(rate))]
    if passes:
        cmd += ["-n", str(passes)]
    out = subprocess.run(pinned(args.client_cpu, cmd), capture_output=True, text=True,
                         timeout=seconds + 60).stdout

    def num(pattern: str) -> float:
        match = re.search(pattern, out)
        if not match:
            raise RuntimeError(f"dnsperf output without {pattern!r}:\n{out}")
        return float(match.group(1))

    return {"qps": num(r"Queries per second:\s+([\d.]+)"),
            "latency_ms": num(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
            "sent": int(num(r"Queries sent:\s+(\d+)")), "lost": int(num(r"Queries lost:\s+(\d+)"))}


# -- the run -----------------------------------------------------------------------------


def check_same(server: Server, answers: dict, sample: int = 300) -> int:
    """How many of (a sample of) the questions this server answers differently from ours."""
    keys = sorted(answers)
    picked = keys if len(keys) <= sample else random.Random(1).sample(keys, sample)
    return sum(summary(ask(server.port or 0, n, t)) != answers[(n, t)] for n, t in picked)


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    qs = questions(args.fleet, args.cluster)
    if not qs:
        raise SystemExit(f"no ServiceImports under {args.fleet / args.cluster}")
    query_file = tmp / "queries.txt"
    mix = qs * max(1, 3000 // len(qs))
    random.Random(7).shuffle(mix)
    query_file.write_text("".join(f"{n} {t}\n" for n, t in mix))
    zone_file = tmp / "clusterset.local.zone"
    results: dict = {name: {"peak": [], "at_load": [], "mismatches": 0} for name in args.servers}
    answers: dict = {}
    rate: float | None = None
    for _ in range(args.rounds):
        for name in args.servers:
            server = start(name, tmp, args, zone_file)
            try:
                if name == "ours" and not answers:
                    text, answers = zone_from(server.port or 0, qs)
                    zone_file.write_text(text)
                elif answers:
                    results[name]["mismatches"] = check_same(server, answers)
                port = server.port or 0
                dnsperf(port, query_file, args, seconds=args.duration, passes=1)  # warm every cache
                results[name]["peak"].append(dnsperf(port, query_file, args, seconds=args.duration))
                if rate is None:  # ours runs first: every server gets the same load
                    rate = LOAD_SHARE * results[name]["peak"][0]["qps"]
                results[name]["at_load"].append(dnsperf(port, query_file, args,
                                                        seconds=args.duration, rate=rate))
            finally:
                server.stop()
    table = {}
    for name, r in results.items():
        peak = max(r["peak"], key=lambda x: x["qps"])
        load = min(r["at_load"], key=lambda x: x["latency_ms"])
        table[name] = {"qps": peak["qps"], "latency_ms_peak": peak["latency_ms"],
                       "lost_peak": peak["lost"], "rate": rate, "qps_at_load": load["qps"],
                       "latency_ms_at_load": load["latency_ms"], "mismatches": r["mismatches"]}
    return {"questions": len(qs), "query_file_lines": len(mix), "rate_at_load": rate,
            "duration": args.duration, "rounds": args.rounds, "servers": table}


def verdicts(res: dict) -> list[tuple[str, bool, str]]:
    servers = res["servers"]
    if "ours" not in servers or "knot" not in servers:
        return []
    ours, knot = servers["ours"], servers["knot"]
    qps = ours["qps"] / knot["qps"] if knot["qps"] else float("inf")
    lat = (ours["latency_ms_at_load"] / knot["latency_ms_at_load"]
           if knot["latency_ms_at_load"] else float("inf"))
    return [(f"qps >= {TARGET_QPS_RATIO}x knot", qps >= TARGET_QPS_RATIO, f"{qps:.2f}x"),
            (f"mean latency at {LOAD_SHARE:.0%} of our peak < {TARGET_LATENCY_RATIO}x knot",
             lat < TARGET_LATENCY_RATIO, f"{lat:.2f}x"),
            ("same answers as ours (sampled)",
             all(s["mismatches"] == 0 for s in servers.values()),
             ", ".join(f"{n}: {s['mismatches']} differ" for n, s in servers.items() if n != "ours"))]


def report(res: dict) -> str:
    servers = res["servers"]
    knot = servers.get("knot")
    rows = [f"{'server':<7} {'peak qps':>10} {'x knot':>7} {'lat@peak ms':>12} {'lost':>6} "
            f"{'qps@80%':>9} {'lat@80% ms':>11} {'x knot':>7}"]
    for name, s in servers.items():
        qx = f"{s['qps'] / knot['qps']:.2f}" if knot and knot["qps"] else "-"
        lx = (f"{s['latency_ms_at_load'] / knot['latency_ms_at_load']:.2f}"
              if knot and knot["latency_ms_at_load"] else "-")
        rows.append(f"{name:<7} {s['qps']:>10.0f} {qx:>7} {s['latency_ms_peak']:>12.3f} "
                    f"{s['lost_peak']:>6} {s['qps_at_load']:>9.0f} {s['latency_ms_at_load']:>11.3f} "
                    f"{lx:>7}")
    rows.append(f"({res['questions']} questions, {res['query_file_lines']}-line query file, "
                f"{res['duration']}s per run, best of {res['rounds']}; 80% of our peak = "
                f"{res['rate_at_load']:.0f} qps)")
    rows += [f"target: {what}: {'PASS' if ok else 'FAIL'} ({detail})"
             for what, ok, detail in verdicts(res)]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000, help="imports in the generated fleet")
    ap.add_argument("--fleet", type=Path, help="serve this fleet folder instead of a generated one")
    ap.add_argument("--cluster", help="the cluster folder of --fleet to serve")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per dnsperf run")
    ap.add_argument("--rounds", type=int, default=1, help="runs per server; the best counts")
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    ap.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    ap.add_argument("--servers", default="ours,knot,naive")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--serve-naive", metavar="ZONE_FILE", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_naive:
        serve_naive(args.serve_naive, args.port)
        return None
    args.servers = [s for s in args.servers.split(",") if s]
    if args.servers[0] != "ours":
        ap.error("--servers must start with ours (its answers make the zone the others serve)")
    missing = [t for t in ("dnsperf", "knotd") if not tool(t)
               and (t == "dnsperf" or "knot" in args.servers)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)} (Debian packages dnsperf, knot)")
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.client_cpu = None
        print("note: one CPU: server and dnsperf share it (no pinning)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as name:
        tmp = Path(name)
        if args.fleet is None:
            args.fleet, args.cluster = generate_fleet(tmp, args.services)
        elif not args.cluster:
            ap.error("--fleet needs --cluster")
        res = measure(args, tmp)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
