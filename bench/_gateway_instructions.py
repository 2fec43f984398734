"""The gateway data path's own cost per request, with in-memory transports (no kernel, no
wrk): a real GatewayApp over the benchmark's fleet (bench/_gateway_setup.py), one client
connections and pooled upstream connections whose transports are lists. Each turn feeds one
request to each client connection's `data_received` and, after the turn's writes left, a
canned nginx response to each upstream connection the proxy wrote to.

Deterministic figure (instructions, not time; what bench/README.md's table uses):

    PY=$(python -c 'import sys; print(sys.executable)')
    for n in 1000 6000; do valgrind --tool=cachegrind --cache-sim=no \\
        --cachegrind-out-file=/dev/null $PY bench/_gateway_instructions.py --requests $n; done
    # instructions per request = (I refs of the second - I refs of the first) / 5000

Without valgrind it prints CPU µs per request (noisy on a shared VM).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/gateway.py
sys.path.insert(0, str(HERE.parent))
sys.path.append(str(HERE))

import _gateway_setup as S  # noqa: E402

from gateway.app import GatewayApp  # noqa: E402
from gateway.proxy.client import ClientConnection  # noqa: E402
from gateway.proxy.mirror_line import MirrorLine  # noqa: E402
from gateway.proxy.pool import UpstreamConnection  # noqa: E402
from mcs_controller.access.loader import load_fleet  # noqa: E402
from mcs_controller.ops.cli import run as run_loop  # noqa: E402  (uvloop when installed)

BODY = b"This is env cluster-a !"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 21:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
            % (len(BODY), BODY))


class ListTransport:
    """What the proxy writes to, kept in a list; `wrote` names upstream connections written to."""

    def __init__(self, wrote: list[UpstreamConnection], owner: UpstreamConnection | None = None) -> None:
        self.owner, self.wrote, self.out = owner, wrote, []

    def write(self, data: bytes) -> None:
        if self.owner is None and len(self.out) > 8:
            del self.out[:]
        self.out.append(data)
        if self.owner is not None:
            self.wrote.append(self.owner)

    def writelines(self, data: list[bytes]) -> None:
        for d in data:
            self.write(d)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...

    def get_extra_info(self, key: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8080)}.get(key, default)


async def measure(requests: int, host: str, batch: int, access_log: str | None = None) -> float:
    fleet, errors = await load_fleet(S.write_fleet(Path(tempfile.mkdtemp())))
    assert not errors and fleet.hub is not None, errors
    app = GatewayApp(fleet.clusters[fleet.hub], fleet.member_clients(),
                     listen=("127.0.0.1", 0), admin=None, access_log=access_log)
    await app.start()
    await app.wait_ready(15)
    wrote: list[UpstreamConnection] = []
    for c in S.CLUSTERS:
        for addr in c.addresses:
            for _ in range(batch):  # one idle connection per request of a turn
                up = UpstreamConnection(app.proxy.pool, (addr, S.POD_PORT))
                up.connection_made(ListTransport(wrote, up))  # type: ignore[arg-type]
                app.proxy.pool.release(up)
    shadow = MirrorLine(app.proxy.mirror, (S.SHADOW.addresses[0], S.POD_PORT))
    shadow.connection_made(ListTransport([]))  # type: ignore[arg-type]
    app.proxy.mirror.lines[shadow.addr] = [shadow]
    clients: list[tuple[ClientConnection, ListTransport]] = []
    for _ in range(batch):  # as at peak: many connections, one request each per turn
        client_side = ListTransport(wrote)
        client = ClientConnection(app.proxy)
        client.connection_made(client_side)  # type: ignore[arg-type]
        clients.append((client, client_side))
    request = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode()

    async def turn() -> None:
        """A turn reading `batch` requests (they leave at its end), then one reading their
        responses (they leave at its end, with the mirror copies), then the copies' answers."""
        for client, _ in clients:
            client.data_received(request)
        await asyncio.sleep(0)
        ups = list(wrote)
        wrote.clear()
        for up in ups:
            up.transport.out.clear()  # type: ignore[attr-defined]
            up.data_received(RESPONSE)
        await asyncio.sleep(0)
        written = shadow.depth - shadow.queued  # (a busy line holds copies: Limits.mirror_hold)
        if written:
            shadow.transport.out.clear()  # type: ignore[union-attr]
            shadow.data_received(RESPONSE * written)

    for _ in range(2000 // batch):  # warm: routes, pools, caches
        await turn()
    first = clients[0][1]
    assert BODY in b"".join(first.out[-3:]), first.out[-3:]
    t0 = time.process_time()
    for _ in range(requests // batch):
        await turn()
    spent = time.process_time() - t0
    await app.stop(0.1)
    return spent / requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100000)
    p.add_argument("--host", default=S.HOST, help=f"{S.MIRROR_HOST}: with a mirror copy each")
    p.add_argument("--batch", type=int, default=10, help="requests per loop turn")
    p.add_argument("--access-log", metavar="FILE", help="with the access log on (e.g. /dev/null)")
    args = p.parse_args(argv)
    result: list[float] = []

    async def go() -> int:
        result.append(await measure(args.requests, args.host, args.batch, args.access_log))
        return 0

    run_loop(go())
    print(f"{args.host}: {result[0] * 1e6:.2f} µs CPU per request (in-memory transports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
