"""Known answers (gateway/proxy/known_answer.py): an upstream answer whose head repeats the
last one on its connection byte for byte is handed over without llhttp. Scripted pods send
exact bytes; a raw client checks that what it gets is what the llhttp path gave for the same
answer, whichever path each answer took."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from gwkit import REF, Env, decision, raw, read_request

from gateway.proxy.known_answer import BARREN_LIMIT
from gateway.types import Endpoint, RetryPolicy


@pytest.fixture
async def env():
    e = Env()
    yield e
    await e.close()


def answer(body: bytes = b"hello", date: bytes = b"Mon, 23 Nov 2026 21:00:00 GMT", status: bytes = b"200 OK",
           extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nServer: nginx\r\nDate: " + date + b"\r\n" + extra
            + b"Content-Type: text/plain\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(body)
            + body)


class Scripted:
    """A pod answering the n-th request it reads with script[n]: bytes written at once, or a
    list of pieces written 20 ms apart (so that the proxy reads them separately)."""

    def __init__(self, script: list[bytes | list[bytes]]) -> None:
        self.script = script
        self.served = 0
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await read_request(reader) is not None:
                item = self.script[self.served]
                self.served += 1
                for i, piece in enumerate([item] if isinstance(item, bytes) else item):
                    if i:
                        await asyncio.sleep(0.02)
                    writer.write(piece)
                    await writer.drain()
        except (ConnectionError, IndexError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def scripted(env: Env, script: list[bytes | list[bytes]], cluster: str = "c1") -> AsyncIterator[Scripted]:
    pod = Scripted(script)
    pod.server = await asyncio.start_server(pod._serve, "127.0.0.1", 0)
    env.backends.setdefault(REF, []).append(
        Endpoint(cluster, "127.0.0.1", pod.server.sockets[0].getsockname()[1]))
    try:
        yield pod
    finally:
        pod.server.close()


async def ask(rd: asyncio.StreamReader, w: asyncio.StreamWriter, method: bytes = b"GET",
              extra: bytes = b"") -> tuple[bytes, bytes]:
    """One request on a raw client connection: the answer's head and body as received."""
    w.write(method + b" / HTTP/1.1\r\nHost: a.example\r\n" + extra + b"\r\n")
    head = await rd.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    bodiless = method == b"HEAD" or head.startswith((b"HTTP/1.1 204", b"HTTP/1.1 304"))
    body = b"" if bodiless else await rd.readexactly(length)
    return head, body


A = answer()
A2 = answer(date=b"Mon, 23 Nov 2026 21:00:01 GMT")  # a second later
B = answer(body=b"longer body")
HOP = answer(extra=b"Connection: X-Secret\r\nX-Secret: 1\r\nX-Kept: yes\r\n")

#: (name, the pod's script, the replays expected). Every answer must reach the client exactly
#: as the first of its kind did, replayed or not.
CASES = [
    ("the same answer again", [A, A, A], 2),
    ("a new Date is learned, then replayed", [A, A, A2, A2, A2], 3),
    ("another length is another head", [A, A, B, B, A], 2),
    ("headers Connection names stay dropped", [HOP, HOP, HOP], 2),
    ("a head and its body in two reads", [A, [A[:-5], A[-5:]], A], 1),
]


@pytest.mark.parametrize(("name", "script", "replays"), CASES, ids=[c[0] for c in CASES])
async def test_answers_reach_the_client_alike_replayed_or_not(env: Env, name: str, script: list, replays: int) -> None:
    async with scripted(env, script):
        await env.start()
        assert env.proxy is not None
        seen: dict[bytes, tuple[bytes, bytes]] = {}
        async with raw(env.port) as (rd, w):
            for item in script:
                sent = item if isinstance(item, bytes) else b"".join(item)
                got = await ask(rd, w)
                first = seen.setdefault(sent, got)
                assert got == first, name
                assert got[1] == sent.split(b"\r\n\r\n", 1)[1]
                date = sent.split(b"Date: ", 1)[1].split(b"\r\n", 1)[0]
                assert b"Date: " + date + b"\r\n" in got[0]
        assert b"X-Secret" not in seen.get(HOP, (b"", b""))[0]
        assert env.proxy.pool.replayed == replays, name


async def test_past_the_replay_the_connection_goes_on_with_llhttp(env: Env) -> None:
    """Bytes past a whole answer are not replayed: llhttp (which never saw the replayed
    answers, so is between messages) reads the answer, then fails on the rest, and that
    connection is closed, not pooled with a parser that can read nothing more."""
    async with scripted(env, [A, A + b"junk", A]) as pod:
        await env.start()
        async with raw(env.port) as (rd, w):
            for _ in range(3):
                head, body = await ask(rd, w)
                assert head.startswith(b"HTTP/1.1 200") and body == b"hello"
        assert env.proxy is not None and env.proxy.pool.replayed == 0
        assert pod.connections == 2  # the one that sent junk was not reused


async def test_head_requests_and_interim_answers_around_a_known_head(env: Env) -> None:
    """HEAD gets a known head with no body (llhttp's path: not a whole answer); a 100 and a
    200 in one read are not learned as one head, so the next plain 200 is replayed right."""
    head_only = A[: -len(b"hello")]
    script = [A, A, head_only, A, b"HTTP/1.1 100 Continue\r\n\r\n" + A, A]
    async with scripted(env, script):
        await env.start()
        assert env.proxy is not None
        async with raw(env.port) as (rd, w):
            first = await ask(rd, w)
            assert await ask(rd, w) == first
            head, body = await ask(rd, w, b"HEAD")
            assert head == first[0] and body == b""
            assert await ask(rd, w) == first
            assert await ask(rd, w, b"POST", b"Content-Length: 0\r\n") == first
            assert await ask(rd, w) == first
        assert env.proxy.pool.replayed == 2  # the 2nd and the last (HEAD closed the first connection)


async def test_bytes_after_a_bodiless_answer_never_reach_the_client(env: Env) -> None:
    """A 304 may carry Content-Length but has no body: such heads are not learned, so bytes a
    pod wrongly sends after one are llhttp's to reject (the connection closes), never relayed
    as a body the client does not expect."""
    not_modified = answer(status=b"304 Not Modified")[: -len(b"hello")]  # Content-Length: 5
    async with scripted(env, [not_modified, not_modified + b"hello", A]):
        await env.start()
        async with raw(env.port) as (rd, w):
            for _ in range(2):
                head, body = await ask(rd, w)
                assert head.startswith(b"HTTP/1.1 304") and body == b""
            head, body = await ask(rd, w)
            assert head.startswith(b"HTTP/1.1 200") and body == b"hello"


async def test_a_known_error_answer_is_still_retried(env: Env) -> None:
    busy = answer(b"busy", status=b"503 Service Unavailable")
    async with scripted(env, [busy] * 4, "c1") as broken, scripted(env, [A] * 4, "c2") as ok:
        await env.start(("*", "/", decision(retry=RetryPolicy(on_statuses=(503,)))))
        assert env.proxy is not None
        async with raw(env.port) as (rd, w):
            for _ in range(4):
                head, body = await ask(rd, w)
                assert head.startswith(b"HTTP/1.1 200") and body == b"hello"
        assert broken.served >= 2 and broken.connections == ok.connections == 1
        assert env.proxy.pool.replayed == broken.served - 1 + ok.served - 1


async def test_heads_that_never_repeat_stop_being_learned(env: Env) -> None:
    script = [answer(extra=b"X-Id: %d\r\n" % i) for i in range(BARREN_LIMIT + 6)]
    async with scripted(env, script):
        await env.start()
        assert env.proxy is not None
        async with raw(env.port) as (rd, w):
            for i in range(len(script)):
                head, body = await ask(rd, w)
                assert b"X-Id: %d\r\n" % i in head and body == b"hello"
        (conn,) = env.proxy.pool.live
        assert conn.barren == BARREN_LIMIT and env.proxy.pool.replayed == 0
        assert conn.known is not None and b"X-Id: %d\r\n" % BARREN_LIMIT in conn.known.raw  # learned no more
