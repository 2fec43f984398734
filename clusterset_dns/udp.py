"""UDP serving in batches: recvmmsg/sendmmsg (Linux) straight from the loop's readiness.

A cached answer costs well under a microsecond of Python; what remains per query is the
kernel, and two syscalls per query (recvmsg + sendmsg, as asyncio's DatagramProtocol
makes them) cost about as much as all the rest of the kernel's work. One recvmmsg takes
up to `BATCH` queued datagrams, each into its own slot of a preallocated buffer; every
reply is written over its query in the same slot, and one sendmmsg sends them all, each
to the address its query came from, which the kernel left in the same message header
(no address ever becomes a Python object). The syscalls are called through ctypes.

`BatchUdp.create` returns None where this cannot work (not Linux, not 64-bit, no
recvmmsg): the server then uses the portable asyncio protocol instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import Protocol

from clusterset_dns.responder import Responder
from clusterset_dns.wire import (
    FULL_LEN,
    HITS_UDP,
    PLAIN_LIMIT,
    TAIL,
    UPRE0,
    UTAIL,
    fast_answer,
    header_reply,
)
from clusterset_dns.zone import FORMERR, SERVFAIL

log = logging.getLogger("clusterset_dns.server")

#: Datagrams per syscall, and batches per readiness callback before other work gets a turn.
BATCH = 32
ROUNDS = 8
#: Bytes per slot: a query longer than this arrives cut (MSG_TRUNC) and gets FORMERR; every
#: UDP reply is at most 1232 bytes (wire.EDNS_PAYLOAD), so it fits over its query.
SLOT = 4096
#: Room for the peer address of one message (sockaddr_in6 is 28 bytes).
NAME = 32
MSG_DONTWAIT, MSG_TRUNC = 0x40, 0x20
#: struct mmsghdr on 64-bit Linux: msghdr (56 bytes) + msg_len, padded to 64. In 32-bit
#: words: msg_namelen at 2, msg_flags at 12, msg_len at 14; in 64-bit words: msg_name 0,
#: msg_iov 2, msg_iovlen 3. struct iovec: base, len (two 64-bit words).
HDR = 64
#: Header bytes 4-8 and 8-12 of the fast path's queries read as native 32-bit words:
#: QDCOUNT 1 + ANCOUNT 0, and NSCOUNT 0 + ARCOUNT 1 (0 + 0 is plain zero).
QD1_AN0 = int.from_bytes(b"\x00\x01\x00\x00", sys.byteorder)
NS0_AR1 = int.from_bytes(b"\x00\x00\x00\x01", sys.byteorder)

Observe = Callable[[float], None]


class Reporter(Protocol):
    """Where internal errors go (the server's rate-limited error log)."""

    def report(self, exc: BaseException) -> None: ...


def _syscalls() -> tuple[Callable[..., int], Callable[..., int]] | None:
    """recvmmsg and sendmmsg from the C library, or None where they cannot be used."""
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        libc = ctypes.PyDLL(None, use_errno=True)  # non-blocking calls: no need to drop the GIL
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


class BatchUdp:
    """Serves one bound non-blocking UDP socket with recvmmsg/sendmmsg."""

    @classmethod
    def create(cls, sock: socket.socket, responder: Responder, observe: Observe, errors: Reporter,
               sample: int) -> BatchUdp | None:
        """A server for `sock` (bound, non-blocking), or None where batches cannot work."""
        calls = _syscalls()
        return None if calls is None else cls(sock, responder, observe, errors, sample, calls)

    def __init__(self, sock: socket.socket, responder: Responder, observe: Observe, errors: Reporter,
                 sample: int, calls: tuple[Callable[..., int], Callable[..., int]]) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        self.responder = responder
        self.observe = observe
        self.errors = errors
        self.sample = sample
        self._tick = sample
        self._recvmmsg, self._sendmmsg = calls
        self.dropped = 0  # replies the kernel would not take (send buffer full, unreachable)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every buffer the kernel reads or writes lives as long as this object.
        self._data = ctypes.create_string_buffer(BATCH * SLOT)
        self._names = ctypes.create_string_buffer(BATCH * NAME)
        self._iov = (ctypes.c_uint64 * (2 * BATCH))()
        self._hdr = (ctypes.c_uint64 * (HDR // 8 * BATCH))()
        data, names, iov = map(ctypes.addressof, (self._data, self._names, self._iov))
        for i in range(BATCH):
            self._iov[2 * i], self._iov[2 * i + 1] = data + i * SLOT, SLOT
            self._hdr[8 * i] = names + i * NAME
            self._hdr[8 * i + 2], self._hdr[8 * i + 3] = iov + 16 * i, 1
        self._hdr32 = memoryview(self._hdr).cast("B").cast("I")
        for i in range(BATCH):
            self._hdr32[16 * i + 2] = NAME  # msg_namelen: the room given
        self._hdr_bytes = memoryview(self._hdr).cast("B")
        self._iov_bytes = memoryview(self._iov).cast("B")
        self._iov64 = self._iov_bytes.cast("Q")
        self._hdr_clean = memoryview(bytes(self._hdr_bytes))
        self._iov_clean = memoryview(bytes(self._iov_bytes))
        self._buf = memoryview(self._data).cast("B")
        self._words = self._buf.cast("I")  # slots are 4-aligned: header counts as words
        self._hdr_addr = ctypes.addressof(self._hdr)
        #: Per slot: (index, data offset, word index of QD+AN, word index of msg_len).
        self._slots = [(i, i * SLOT, i * SLOT // 4 + 1, 16 * i + 14) for i in range(BATCH)]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._fd, self._ready)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self.sock.close()

    def _ready(self) -> None:
        """Readiness: up to ROUNDS full batches, then the loop's other work gets a turn."""
        try:
            for _ in range(ROUNDS):
                if self._batch() < BATCH:
                    return
        except Exception as exc:  # noqa: BLE001 - serving must go on whatever happens
            self.errors.report(exc)

    def _batch(self) -> int:
        n = self._recvmmsg(self._fd, self._hdr_addr, BATCH, MSG_DONTWAIT, None)
        if n <= 0:
            if n < 0:
                err = ctypes.get_errno()
                if err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    log.debug("udp receive error: %s", errno.errorcode.get(err, err))
            return 0
        self._tick -= n
        start = time.perf_counter() if self._tick <= 0 else 0.0
        try:
            self._answer(n)
        finally:  # back to the receiving state: full slots, room for every address
            self._iov_bytes[:16 * n] = self._iov_clean[:16 * n]
            self._hdr_bytes[:HDR * n] = self._hdr_clean[:HDR * n]
        if start:
            elapsed = time.perf_counter() - start
            while self._tick <= 0:  # every sampled query waited for this batch
                self._tick += self.sample
                self.observe(elapsed)
        return n

    def _answer(self, n: int) -> None:
        """Write each reply over its query (whose ID and question are already in place),
        then send them all.

        Cache hits of the two common shapes (no EDNS; EDNS with an option-less OPT, the
        alias table) are patched in place: the 10 header bytes after the ID, then the
        cached sections after the question. This is `wire.fast_answer`'s plain and alias
        path without building a reply object; everything else goes through it whole.
        A hit's question is a validated one (at most 12 + 259 + 11 bytes with the OPT),
        so its reply (at most 1232 bytes after the question) stays inside its slot.
        """
        hdr32, iov64, buf, words = self._hdr32, self._iov64, self._buf, self._words
        responder = self.responder
        plain, edns, alias = responder.plain, responder.edns, responder.alias
        hits, full_len, tail_slot, limit = HITS_UDP, FULL_LEN, TAIL, PLAIN_LIMIT  # locals: fast
        gaps = False
        for i, off, counts, size_at in self._slots[:n]:
            size = hdr32[size_at]
            flags = buf[off + 2]
            if not flags & 0xF8 and words[counts] == QD1_AN0 and size < SLOT:
                ar = words[counts + 1]  # NS and AR counts
                if not ar:  # no EDNS: keyed by the question
                    key = bytes(buf[off + 12:off + size])
                    # Keys are lower-cased: a query without capitals needs no copy to match.
                    e = plain.get(key) or plain.get(key.lower())
                    if e is not None:
                        e[hits] += 1
                        if e[full_len] > limit:
                            buf[off + 2:off + 12] = e[UPRE0 + (flags & 1)]
                            tail = e[UTAIL]
                        else:
                            buf[off + 2:off + 12] = e[flags & 1]
                            tail = e[tail_slot]
                        end = size + len(tail)
                        buf[off + size:off + end] = tail
                        iov64[2 * i + 1] = end
                        continue
                elif ar == NS0_AR1:  # EDNS: keyed by question + OPT, the variant chosen
                    key = bytes(buf[off + 12:off + size])
                    e = alias.get(key) or alias.get(key.lower())
                    if e is not None:
                        e[hits] += 1
                        buf[off + 2:off + 12] = e[flags & 1]
                        tail = e[tail_slot]
                        size -= 11  # the cached sections replace the query's OPT
                        end = size + len(tail)
                        buf[off + size:off + end] = tail
                        iov64[2 * i + 1] = end
                        continue
            data = bytes(buf[off:off + size])
            try:
                if hdr32[16 * i + 12] & MSG_TRUNC:
                    reply = header_reply(data, FORMERR) if size >= 12 and not data[2] & 0x80 else None
                else:
                    reply = fast_answer(plain, edns, alias, data, False)
                    if reply is None:
                        reply = responder.slow(data, False)
            except Exception as exc:  # noqa: BLE001 - one bad packet must not stop serving
                self.errors.report(exc)
                reply = header_reply(data, SERVFAIL) if size >= 12 and not data[2] & 0x80 else None
            if reply is None or len(reply) > SLOT:
                iov64[2 * i + 1] = 0
                gaps = True
                continue
            buf[off:off + len(reply)] = reply
            iov64[2 * i + 1] = len(reply)
        self._send(n, gaps)

    def _send(self, n: int, gaps: bool) -> None:
        """Send slots 0..n-1 (those with a reply); runs of consecutive slots per syscall."""
        iov64 = self._iov64
        i = 0
        while i < n:
            if gaps and not iov64[2 * i + 1]:
                i += 1
                continue
            j = i + 1
            if gaps:
                while j < n and iov64[2 * j + 1]:
                    j += 1
            else:
                j = n
            sent = self._sendmmsg(self._fd, self._hdr_addr + HDR * i, j - i, 0)
            if sent <= 0:
                err = ctypes.get_errno() if sent < 0 else 0
                if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.dropped += n - i  # the send buffer is full: UDP may drop
                    return
                if err != errno.EINTR:
                    self.dropped += 1  # this one cannot be sent (unreachable, ...): skip it
                    i += 1
                continue
            i += sent
