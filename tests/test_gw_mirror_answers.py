"""Mirror lines count their answers from raw bytes while they are plain
(gateway/proxy/mirror_line.py `plain_length`, `MirrorLine._count_plain`), and hand over to
llhttp from the first one that is not, until a message boundary: table-driven, then through
real sockets with answers cut at every kind of place."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
from gwkit import Env, decision, eventually

from gateway.proxy.mirror_line import PLAIN_BODY, MirrorLine, plain_length
from gateway.types import BackendRef, Endpoint, MirrorPolicy

SHADOW = BackendRef("default", "shadow", 80)


def answer(status: str = "200 OK", body: bytes = b"hello", date: str = "Tue, 24 Nov 2026 04:00:00 GMT",
           extra: str = "", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (f"HTTP/1.1 {status}\r\nServer: nginx\r\nDate: {date}\r\nContent-Length: {n}\r\n"
            f"{extra}\r\n").encode() + body


def head(raw: bytes) -> bytes:
    return raw[: raw.index(b"\r\n\r\n") + 4]


@pytest.mark.parametrize("raw, length", [
    (answer(), 5),
    (answer(body=b""), 0),
    (answer("503 Busy", b"x" * 40), 40),
    (answer(extra="Connection: keep-alive\r\n"), 5),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", 3),  # any case
    (b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH:7\r\n\r\n", 7),
    (answer("204 No Content", b"", length=5), 0),  # no body, whatever it says
    (answer("304 Not Modified", b"", length=100), 0),
    # not plain: llhttp decides
    (answer("100 Continue", b""), -1),  # interim
    (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", -1),  # HTTP/1.0 keep-alive rules
    (answer(extra="Transfer-Encoding: chunked\r\n"), -1),
    (answer(extra="Connection: close\r\n"), -1),
    (answer(extra="Connection: Close\r\n"), -1),
    (answer(extra="Content-Length: 5\r\n"), -1),  # twice
    (b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", -1),  # no length: until close
    (answer(length=PLAIN_BODY + 1, body=b""), -1),  # big bodies stream through llhttp
    (answer(length=-1, body=b""), -1),
    (b"HTTP/1.1 2x0 OK\r\nContent-Length: 1\r\n\r\n", -1),
])
def test_plain_length(raw, length):
    assert plain_length(head(raw)) == length


async def test_counting_skips_known_heads_and_keeps_cut_answers():
    env = Env()
    await env.start()
    try:
        assert env.proxy is not None
        ln = MirrorLine(env.proxy.mirror, ("127.0.0.1", 1))  # never connected: counting only
        a = answer()
        assert ln._count_plain(a * 3) == (3, -1) and ln.known == head(a)
        assert ln._count_plain(a + a[:10]) == (1, -1) and ln.tail == a[:10]  # cut in the head
        assert ln._count_plain(a + a[:-2]) == (1, -1) and ln.tail == a[:-2]  # cut in the body
        b = answer(date="Tue, 24 Nov 2026 04:00:01 GMT", body=b"other!")  # a new second
        assert ln._count_plain(a + b + b) == (3, -1) and ln.known == head(b)
        odd = answer(extra="Transfer-Encoding: chunked\r\n")
        assert ln._count_plain(a + b + odd + a) == (2, len(a + b))  # llhttp from the odd one
    finally:
        await env.close()


async def test_a_read_of_learned_answers_is_counted_at_once_and_anything_else_answer_by_answer():
    """A read made only of whole copies of the last learned answer is counted by one
    comparison (`run`); a read with another body, a cut answer or a new head is counted one
    answer at a time, and those counts are the same."""
    env = Env()
    await env.start()
    try:
        assert env.proxy is not None
        ln = MirrorLine(env.proxy.mirror, ("127.0.0.1", 1))
        a = answer()
        assert ln._count_plain(a) == (1, -1) and ln.unit == len(a) and ln.run.startswith(a * 2)
        assert len(ln.run) <= 65536
        learned = ln.run
        assert ln._count_plain(a * 40) == (40, -1)
        same_length = answer(body=b"HELLO")  # the same head, another body of the same length
        assert ln._count_plain(a + same_length + a) == (3, -1) and ln.run is learned
        assert ln._count_plain(a * 3 + a[:7]) == (3, -1) and ln.tail == a[:7]
        ln.tail = b""
        b = answer(date="Tue, 24 Nov 2026 04:00:01 GMT")  # a new second: a new head and run
        assert ln._count_plain(a + b[:20]) == (1, -1)
        assert ln._count_plain(ln.tail + b[20:] + b) == (2, -1) and ln.unit == len(b)
        assert ln._count_plain(b * 5) == (5, -1) and ln.run.startswith(b)
        assert ln._count_plain(a * 2) == (2, -1) and ln.run.startswith(a)  # (back: learned again)
        # A body too long for a run of two: the run holds one answer, still counted right.
        big = answer(body=b"z" * 40000)
        assert ln._count_plain(big * 3) == (3, -1) and ln.run == big
        assert ln._count_plain(big * 2) == (2, -1)
    finally:
        await env.close()


async def test_through_sockets_with_cut_and_odd_answers():
    """Plain answers (the Date changing), odd ones (interim, chunked, no-body statuses) in
    between, every answer written in random cuts: each copy is counted once its answer is
    whole, never before, and the line stays up throughout."""
    rng = random.Random(4)
    script = [answer(), answer(), answer(date="Tue, 24 Nov 2026 04:00:09 GMT"),
              b"HTTP/1.1 100 Continue\r\n\r\n" + answer(),
              b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
              answer(), answer("204 No Content", b"", length=3), answer("304 Not Modified", b"", length=9),
              answer(body=b"y" * 3000), answer()]
    written: list[int] = []  # answers wholly written so far
    step = asyncio.Event()

    async def shadow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        for raw in script:
            while b"\r\n\r\n" not in buf:
                buf += await reader.read(65536)
            buf = buf.partition(b"\r\n\r\n")[2]
            cuts = sorted(rng.sample(range(1, len(raw)), 3))
            for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
                writer.write(raw[a:b])
                await writer.drain()
                await asyncio.sleep(0.005)
                if b < len(raw):  # part of an answer is out: its copy is not counted yet
                    assert env.hooks.mirrors.count("sent") == len(written)
            written.append(1)
            step.set()
        await reader.read()
        writer.close()

    env = Env()
    server = await asyncio.start_server(shadow, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        await env.upstream("primary")
        env.backends[SHADOW] = [Endpoint(cluster="c2", ip="127.0.0.1", port=port)]
        await env.start(("*", "/", decision(mirrors=(MirrorPolicy(backend=SHADOW),))))
        async with aiohttp.ClientSession() as s:
            for i in range(len(script)):
                async with s.get(env.url(f"/n{i}")) as r:
                    assert r.status == 200
                await eventually(lambda i=i: len(written) == i + 1, within=3)
                await eventually(lambda i=i: env.hooks.mirrors.count("sent") == i + 1)
        assert env.hooks.mirrors == ["sent"] * len(script)
        assert env.proxy is not None and env.proxy.mirror.in_flight == 0
        assert len(env.proxy.mirror.lines[("127.0.0.1", port)]) == 1
    finally:
        server.close()
        await env.close()
