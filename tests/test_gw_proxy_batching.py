"""Writes leave at the end of a loop turn: one send per connection for everything a turn
produced, after every read of that turn was handled, so a peer wakes once per turn rather
than once per request (gateway/proxy/pool.py `WRITE_NOW`, ProxyServer.flush_later).

Checked on real sockets: a recording wrapper around the proxy's transports notes, at each
send, how many bytes are still unread on the proxy's sockets of the other side (FIONREAD)."""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from typing import Any

import pytest
from gwkit import Env, read_response

from gateway.proxy.pool import WRITE_NOW, ConnectionPool, UpstreamConnection


@pytest.fixture
async def env():
    e = Env()
    yield e
    await e.close()


def unread(sock: Any) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


class Recorder(asyncio.Transport):
    """A real transport, with each send noted (what it carried, and `probe()` at that moment)."""

    def __init__(self, inner: asyncio.Transport, sends: list, probe=lambda: None) -> None:
        super().__init__()
        self.inner, self.sends, self.probe = inner, sends, probe

    def write(self, data: Any) -> None:
        self.sends.append((bytes(data), self.probe()))
        self.inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        pieces = list(list_of_data)
        self.sends.append((b"".join(pieces), self.probe()))
        self.inner.writelines(pieces)

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def write_eof(self) -> None:
        self.inner.write_eof()


async def test_a_turns_requests_and_responses_leave_after_all_its_reads(env: Env) -> None:
    """Four clients' requests read in one turn: no upstream send before the last of them was
    read; their four responses read in one turn: no client send before the last was read."""
    await env.upstream("u1")
    await env.start()
    proxy = env.proxy
    assert proxy is not None
    n = 4
    clients = [await asyncio.open_connection("127.0.0.1", env.port) for _ in range(n)]
    try:
        async def round_trip() -> list[int]:
            for _, w in clients:
                w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            return [(await read_response(r)).status for r, _ in clients]

        assert await round_trip() == [200] * n  # warm: n pooled upstream connections
        assert len(proxy.pool.live) == n and len(proxy.conns) == n
        client_socks = [c.transport.get_extra_info("socket") for c in proxy.conns]
        up_socks = [u.transport.get_extra_info("socket") for u in proxy.pool.live]
        up_sends: list = []
        client_sends: list = []
        for u in proxy.pool.live:
            u.transport = Recorder(u.transport, up_sends, lambda: sum(map(unread, client_socks)))
        for c in proxy.conns:
            c.transport = Recorder(c.transport, client_sends, lambda: sum(map(unread, up_socks)))

        assert await round_trip() == [200] * n
        assert len(up_sends) == n and len(client_sends) == n
        assert all(data.startswith(b"GET / HTTP/1.1\r\n") for data, _ in up_sends)
        assert [left for _, left in up_sends] == [0] * n  # every client request already read
        assert all(data.startswith(b"HTTP/1.1 200") for data, _ in client_sends)
        assert [left for _, left in client_sends] == [0] * n  # every response already read
    finally:
        for _, w in clients:
            w.close()


async def test_upstream_writes_of_a_turn_are_one_send_big_pieces_go_at_once() -> None:
    loop = asyncio.get_running_loop()
    got = bytearray()
    eof = asyncio.Event()

    async def sink(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            got.extend(data)
        eof.set()
        w.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool(loop, 4, 60.0)
    addr = ("127.0.0.1", port)
    try:
        _, conn = await loop.create_connection(lambda: UpstreamConnection(pool, addr), *addr)
        sends: list = []
        conn.transport = Recorder(conn.transport, sends)

        conn.write(b"a")
        conn.write(b"b")
        assert sends == []  # held until the turn ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert [d for d, _ in sends] == [b"ab"]

        big = b"x" * WRITE_NOW
        conn.write(b"c")
        conn.write(big)
        assert [d for d, _ in sends] == [b"ab", b"c" + big]  # at once, after what was held
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(sends) == 2

        conn.write(b"d")
        conn.close()  # what was held for a closed connection is dropped, no error
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(sends) == 2
        await asyncio.wait_for(eof.wait(), 2.0)
        assert bytes(got) == b"abc" + big
    finally:
        server.close()
        await server.wait_closed()
