"""What bench/gateway.py stands up: the upstream "pods" (nginx), the nginx peer proxy, our
gateway's fleet folder, wrk scripts, and child processes that are always cleaned up.

Topology (all on 127.0.0.0/8): three member clusters, each an nginx process of its own so a
whole cluster can be killed at once; every pod is one listen address of that process,
answering `This is env <cluster> !`, and each process has a stub_status port so the benchmark
can count what each cluster received. cluster-a has 2 pods, cluster-b 3, cluster-c 1 (the
mirror target, never a primary backend). Both proxies split traffic 50/50 between cluster-a
and cluster-b regardless of pod counts: ours through `multicluster.amcs.dev/cluster-weights`,
nginx through per-server weights that add up to the same split.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import yaml

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from netkit import free_port  # noqa: E402,F401  (loopback ports, as the tests pick them)

NS = "bench"
HOST, MIRROR_HOST, MIRROR10_HOST = "bench.local", "mirror.local", "mirror10.local"
POD_PORT, STATUS_PORT = 8080, 8081
ANN = "multicluster.amcs.dev/"


@dataclass(frozen=True)
class Cluster:
    name: str
    net: int  # pods are 127.77.<net>.10, .11, ...; stub_status on 127.77.<net>.1
    pods: int
    weight: int  # cluster weight in the primary split; 0: not a primary backend

    @property
    def addresses(self) -> list[str]:
        return [f"127.77.{self.net}.{10 + i}" for i in range(self.pods)]

    @property
    def status_url(self) -> str:
        return f"http://127.77.{self.net}.1:{STATUS_PORT}/"

    @property
    def body(self) -> str:
        return f"This is env {self.name} !"


CLUSTERS = (Cluster("cluster-a", 1, 2, 50), Cluster("cluster-b", 2, 3, 50),
            Cluster("cluster-c", 3, 1, 0))
PRIMARY = tuple(c for c in CLUSTERS if c.weight)
SHADOW = CLUSTERS[2]
KILLED = CLUSTERS[0]  # the cluster the failover run kills


def weights_annotation() -> str:
    return ",".join(f"{c.name}={c.weight}" for c in PRIMARY)


def pod_weights() -> dict[str, int]:
    """nginx per-server weights giving each cluster its share whatever its pod count."""
    lcm = reduce(math.lcm, (c.pods for c in PRIMARY))
    raw = {a: c.weight * lcm // c.pods for c in PRIMARY for a in c.addresses}
    g = reduce(math.gcd, raw.values())
    return {a: w // g for a, w in raw.items()}


# -- child processes ---------------------------------------------------------------------


def die_with_parent() -> None:
    """Children get SIGKILL if the benchmark itself is killed (no orphans holding ports)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


@dataclass
class Procs:
    """Every child started, stopped in reverse order on close (also on errors)."""

    logs: Path
    running: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str], **kw) -> subprocess.Popen:
        err = open(self.logs / f"{name}.err", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=err,
                                stdout=kw.pop("stdout", subprocess.DEVNULL),
                                preexec_fn=die_with_parent, **kw)
        err.close()
        self.running[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: float = 3.0) -> None:
        proc = self.running.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(3)

    def close(self) -> None:
        for name in reversed(list(self.running)):
            self.kill(name, signal.SIGTERM)

    def stderr_tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.err"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def wait_listening(addr: tuple[str, int], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(addr, timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on {addr[0]}:{addr[1]} after {within}s") from None
            time.sleep(0.05)


def ensure_free(addr: tuple[str, int]) -> None:
    """Refuse to start on an address someone else serves (e.g. a second benchmark running)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise RuntimeError(f"{addr[0]}:{addr[1]} is in use ({exc.strerror}): is another "
                               "bench/gateway.py running?") from None


def read_line(proc: subprocess.Popen, within: float) -> str:
    """One line of a child's stdout, or '' if it said nothing in time."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], within)
    return proc.stdout.readline().decode(errors="replace").strip() if ready else ""


def cpu_times(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads, from /proc."""
    if pid is None:
        return 0.0, 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def core_times(cpu: int) -> tuple[float, float]:
    """(busy, steal) seconds of core `cpu` from /proc/stat: busy is what ran on it (not idle,
    iowait or steal); steal is time the hypervisor gave this virtual core to someone else."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
            tick = os.sysconf("SC_CLK_TCK")
            return (user + nice + system + irq + softirq) / tick, steal / tick
    return 0.0, 0.0


def stub_requests(cluster: Cluster) -> int | None:
    """Requests an upstream nginx has served (stub_status), None when it is down."""
    try:
        with socket.create_connection((f"127.77.{cluster.net}.1", STATUS_PORT), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: status\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    lines = data.decode().split("\r\n\r\n", 1)[-1].splitlines()
    return int(lines[2].split()[2])


# -- nginx configuration ---------------------------------------------------------------------


def _nginx_main(work: Path, name: str) -> str:
    temp = work / f"{name}.tmp"
    temp.mkdir(exist_ok=True)
    paths = " ".join(f"{k}_temp_path {temp}/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"daemon off; master_process off; worker_processes 1; pid {work}/{name}.pid;\n"
            f"error_log {work}/{name}.log warn;\n"
            "events { worker_connections 4096; multi_accept on; }\n"
            f"http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 300s;\n"
            f"  {paths}\n")


def upstream_conf(work: Path, cluster: Cluster) -> Path:
    """One member cluster's pods: one nginx process, one listen address per pod."""
    listens = "".join(f"    listen {a}:{POD_PORT};\n" for a in cluster.addresses)
    text = (_nginx_main(work, cluster.name)
            + f"  server {{\n{listens}    default_type text/plain;\n"
            + f'    location / {{ return 200 "{cluster.body}"; }}\n  }}\n'
            + f"  server {{ listen 127.77.{cluster.net}.1:{STATUS_PORT}; "
            + "location / { stub_status; } }\n}\n")
    path = work / f"{cluster.name}.conf"
    path.write_text(text)
    return path


def peer_conf(work: Path, port: int) -> Path:
    """nginx as the peer proxy: the same hosts, weights and forwarded headers as ours."""
    servers = "".join(f"    server {a}:{POD_PORT} weight={w};\n" for a, w in pod_weights().items())
    shadow = "".join(f"    server {a}:{POD_PORT};\n" for a in SHADOW.addresses)
    proxy = ("proxy_http_version 1.1; proxy_set_header Connection \"\";\n"
             "      proxy_set_header Host $host; proxy_set_header X-Request-ID $request_id;\n"
             "      proxy_set_header X-Real-IP $remote_addr;\n"
             "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
             "      proxy_set_header X-Forwarded-Host $host;\n"
             "      proxy_set_header X-Forwarded-Port $server_port;\n"
             "      proxy_set_header X-Forwarded-Proto $scheme;\n")
    text = (_nginx_main(work, "peer")
            + f"  upstream web {{\n{servers}    keepalive 128; keepalive_requests 10000000;\n  }}\n"
            + f"  upstream shadow {{\n{shadow}    keepalive 64; keepalive_requests 10000000;\n  }}\n"
            + f"  server {{ listen 127.0.0.1:{port} default_server; return 404; }}\n"
            + f"  server {{\n    listen 127.0.0.1:{port}; server_name {HOST};\n"
            + f"    location / {{ proxy_pass http://web; {proxy}    }}\n  }}\n"
            + f"  server {{\n    listen 127.0.0.1:{port}; server_name {MIRROR_HOST};\n"
            + f"    location / {{ mirror /_mirror; proxy_pass http://web; {proxy}    }}\n"
            + "    location = /_mirror { internal; proxy_pass http://shadow$request_uri;\n"
            + f"      {proxy.replace('$host;', '$host-shadow;', 1)}    }}\n  }}\n}}\n")
    path = work / "peer.conf"
    path.write_text(text)
    return path


def nginx_cmd(nginx: str, conf: Path) -> list[str]:
    return [nginx, "-p", str(conf.parent), "-e", str(conf.with_suffix(".log")), "-c", str(conf)]


# -- our gateway's fleet ---------------------------------------------------------------------


def _ingress(name: str, host: str, annotations: dict[str, str]) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": NS, "annotations": annotations},
            "spec": {"ingressClassName": "amcs", "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}


def write_fleet(root: Path) -> Path:
    """A hub with three Ingresses (plain, mirrored 100 % and 10 %, all weighted), and members
    whose `web` Service's EndpointSlice names the nginx pods, as the built-in controller would."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    weights = {f"{ANN}cluster-weights": weights_annotation()}
    hub = [ns,
           {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "amcs"}, "spec": {"controller": "amcs.dev/gateway"}},
           _ingress("bench", HOST, weights),
           _ingress("bench-mirror", MIRROR_HOST, {**weights, f"{ANN}mirror-cluster": SHADOW.name}),
           _ingress("bench-mirror10", MIRROR10_HOST, {**weights, f"{ANN}mirror-cluster": SHADOW.name,
                                                      f"{ANN}mirror-cluster-percentage": "10"})]
    folders = {"hub": hub}
    for c in CLUSTERS:
        service = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": NS, "labels": {"app": "web"}},
                   "spec": {"selector": {"app": "web"}, "ports": [
                       {"name": "http", "protocol": "TCP", "port": 80, "targetPort": POD_PORT}]}}
        endpoints = [{"addresses": [a], "conditions": {"ready": True, "serving": True,
                                                       "terminating": False}}
                     for a in c.addresses]
        slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": "web-bench", "namespace": NS, "labels": {
                      "kubernetes.io/service-name": "web",
                      "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                  "addressType": "IPv4", "endpoints": endpoints,
                  "ports": [{"name": "http", "protocol": "TCP", "port": POD_PORT}]}
        folders[c.name] = [ns, service, slice_]
    fleet = root / "fleet"
    for name, docs in folders.items():
        (fleet / name).mkdir(parents=True)
        (fleet / name / "objects.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    (fleet / "fleet.yaml").write_text(yaml.safe_dump({"apiVersion": "amcs.dev/v1alpha1",
                                                      "kind": "Fleet", "hub": "hub"}))
    return fleet


# -- wrk ---------------------------------------------------------------------------------------

_DONE = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local e, other = summary.errors, 0
  for _, t in ipairs(threads) do other = other + (t:get("non2xx") or 0) end
  io.write(string.format('BENCHJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"non2xx":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f}\\n', summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, other, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
    latency.mean))
end
"""

_COUNT = """
non2xx = 0
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
"""


def wrk_script(work: Path, count_status: bool = False) -> Path:
    """done() prints one JSON line; count_status counts every non-2xx (wrk's own count is of
    >= 400 only). wrk runs flat out; paced runs use bench/_paced.py."""
    text = _DONE + (_COUNT if count_status else "")
    name = f"wrk-peak{'-count' if count_status else ''}.lua"
    path = work / name
    path.write_text(text)
    return path


def parse_result(out: str, tag: str, who: str) -> dict:
    """The JSON after `tag` on one of the load generator's lines (wrk's done() hook or
    bench/_paced_load.c), with `rps` and `socket_errors` derived from it."""
    for line in out.splitlines():
        if line.startswith(tag + " "):
            res = json.loads(line[len(tag) + 1:])
            res["rps"] = res["requests"] / (res["duration_us"] / 1e6) if res["duration_us"] else 0.0
            res["socket_errors"] = res["connect"] + res["read"] + res["write"] + res["timeout"]
            return res
    raise RuntimeError(f"{who} printed no result:\n{out[-2000:]}")


def parse_wrk(out: str) -> dict:
    return parse_result(out, "BENCHJSON", "wrk")


# -- the machine -------------------------------------------------------------------------------

HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")

_LATENESS = """
import json, time
late = []
end = time.monotonic() + %f
while time.monotonic() < end:
    t = time.monotonic_ns()
    time.sleep(0.0002)
    late.append(time.monotonic_ns() - t - 200000)
late.sort()
pick = lambda q: late[min(len(late) - 1, int(q * len(late)))] / 1000
print(json.dumps({"samples": len(late), "p50_us": pick(0.5), "p99_us": pick(0.99),
                  "p999_us": pick(0.999), "max_us": late[-1] / 1000}))
"""


def wakeup_lateness(cpus: tuple[int, ...], seconds: float = 2.0) -> dict[int, dict]:
    """How late an idle core's sleeper wakes (200 µs sleeps, all cores at once): the floor
    under any tail latency measured here, whatever the proxy."""
    procs = {c: subprocess.Popen(pinned(c, [sys.executable, "-c", _LATENESS % seconds]),
                                 stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
             for c in cpus}
    return {c: json.loads(p.communicate(timeout=seconds + 30)[0]) for c, p in procs.items()}


def halt_poll_check(ns: int | None) -> None:
    if ns is None:
        return
    if ns < 0:
        raise RuntimeError(f"{ns}: must be >= 0 nanoseconds")
    if not HALT_POLL.exists():
        raise RuntimeError(f"{HALT_POLL} does not exist (not a guest with the haltpoll cpuidle "
                           "driver)")
    if not os.access(HALT_POLL, os.W_OK):
        raise RuntimeError(f"{HALT_POLL} is not writable (run as root)")


@contextlib.contextmanager
def halt_poll(ns: int | None):
    """Set the haltpoll window for the duration (None: leave it); yields the value in force."""
    if ns is None:
        yield int(HALT_POLL.read_text()) if HALT_POLL.exists() else None
        return
    before = HALT_POLL.read_text().strip()
    HALT_POLL.write_text(str(ns))
    try:
        yield ns
    finally:
        HALT_POLL.write_text(before)
