"""Load-balancing building blocks: endpoint pools, hash keys and rings, weights, priority loads.

Everything here is pure and precomputed on change, so a pick is a few attribute reads:
round robin is an index modulo a list, the hash ring a bisect, cluster weights nginx's
smooth weighted round robin over a handful of clusters.
"""

from __future__ import annotations

import random
import time
import zlib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Final

from gateway.types import Endpoint
from gateway.variables import KeyFunc, compile_hash_key  # noqa: F401 - re-exported

#: Points per endpoint on the hash ring (nginx's ketama-compatible `hash ... consistent` uses 160).
VNODES: Final = 160

Accept = Callable[[Endpoint], bool]

#: The default "nothing excluded" of a pick (one object: compiled code would otherwise build
#: an empty frozenset per call).
NOTHING: Final[frozenset[Any]] = frozenset()


def hash_key(text: str) -> int:
    """32-bit hash of a request key (CRC32, as nginx's hash module)."""
    return zlib.crc32(text.encode("utf-8", "surrogateescape"))


def mix(h: int) -> int:
    """A second, decorrelated 32-bit value from a hash (for priority / cluster choice)."""
    return (h * 2654435761 + 0x9E3779B9) & 0xFFFFFFFF


# ---------------------------------------------------------------------- hash ring


@lru_cache(maxsize=65536)
def _points(cluster: str, ip: str, port: int) -> tuple[int, ...]:
    base = f"{cluster}/{ip}:{port}#".encode()
    return tuple(zlib.crc32(base + str(i).encode()) for i in range(VNODES))


_IDX_BITS: Final = 20  # endpoints per ring: up to 2**20


class HashRing:
    """Consistent hashing with VNODES points per endpoint: removing one moves only its share.

    Points are stored as (point << 20 | index) ints so building is one sort of plain ints.
    A ring is built over a level's *ready* endpoints and reused while that set is unchanged;
    health changes are handled by walking past unusable endpoints, which maps every key
    exactly as a ring without them would.
    """

    __slots__ = ("_enc", "_eps", "members")

    def __init__(self, eps: Sequence[Endpoint]) -> None:
        self.members = list(eps)
        enc: list[int] = []
        for idx, ep in enumerate(self.members):
            enc.extend((p << _IDX_BITS) | idx for p in _points(ep.cluster, ep.ip, ep.port))
        enc.sort()
        self._enc = enc
        self._eps = self.members

    def _start(self, h: int) -> int:
        i = bisect_right(self._enc, (h << _IDX_BITS) | ((1 << _IDX_BITS) - 1))
        return i if i < len(self._enc) else 0

    def get(self, h: int) -> Endpoint:
        return self._eps[self._enc[self._start(h)] & ((1 << _IDX_BITS) - 1)]

    def walk(self, h: int, accept: Accept) -> Endpoint | None:
        """The first accepted endpoint clockwise from h (None only if none is accepted)."""
        enc, eps, n = self._enc, self._eps, len(self._enc)
        mask = (1 << _IDX_BITS) - 1
        start = self._start(h)
        for k in range(n):
            ep = eps[enc[(start + k) % n] & mask]
            if accept(ep):
                return ep
        return None


# ---------------------------------------------------------------------- pools

_RR: Final = 0
_LEAST: Final = 1
_RANDOM: Final = 2
_RING: Final = 3  # a ring over exactly these endpoints
_WALK: Final = 4  # a ring over more: walk past the others
_EWMA: Final = 5


class Pool:
    """A non-empty endpoint list with one algorithm's state; `pick(h)` is the fast path.

    For "hash", `ring` may cover more endpoints than `eps` (the ready ones, reused across
    health changes); picks then walk past those not in `eps`.
    """

    __slots__ = ("eps", "n", "i", "ring", "kind", "algorithm", "_members")

    def __init__(self, eps: Sequence[Endpoint], algorithm: str, start: int = 0,
                 ring: HashRing | None = None) -> None:
        self.eps = list(eps)
        self.n = len(self.eps)
        self.i = start
        self.algorithm = algorithm
        self.ring: HashRing | None = None
        self._members: set[Endpoint] | None = None
        self.kind = _RR  # which pick `pick` makes, decided once
        if algorithm == "hash":
            self.ring = ring if ring is not None else HashRing(self.eps)
            if len(self.ring.members) == self.n:
                self.kind = _RING
            else:
                self._members = set(self.eps)
                self.kind = _WALK
        elif algorithm == "least_conn":
            self.kind = _LEAST
        elif algorithm == "random":
            self.kind = _RANDOM
        elif algorithm == "ewma":
            self.kind = _EWMA

    def pick(self, h: int) -> Endpoint:
        """Round robin inline, the others by a direct call (no bound method per pick)."""
        kind = self.kind
        if kind == _RR:
            i = self.i
            self.i = i + 1 if i < 0x3FFFFFFF else 0
            return self.eps[i % self.n]
        if kind == _LEAST:
            return self._least(h)
        if kind == _RANDOM:
            return self._random(h)
        if kind == _RING:
            return self.ring.get(h)  # type: ignore[union-attr]
        if kind == _EWMA:
            return two_choices(self.eps)
        return self._walk(h)

    def _walk(self, h: int) -> Endpoint:
        assert self.ring is not None and self._members is not None
        return self.ring.walk(h, self._members.__contains__)  # type: ignore[return-value]

    def _random(self, _h: int, _rand: Callable[[], float] = random.random) -> Endpoint:
        return self.eps[int(_rand() * self.n)]

    def _least(self, _h: int) -> Endpoint:
        """nginx least_conn: fewest active requests, ties broken by round robin."""
        eps, n = self.eps, self.n
        start = self.i
        self.i = start + 1 if start < 0x3FFFFFFF else 0
        best = eps[start % n]
        best_a = best.active_requests
        if best_a:
            for k in range(1, n):
                ep = eps[(start + k) % n]
                a = ep.active_requests
                if a < best_a:
                    best, best_a = ep, a
                    if not a:
                        break
        return best

    def pick_from(self, h: int, accept: Accept) -> Endpoint | None:
        """The slow path for retries: the same algorithm over the accepted endpoints only."""
        cands = [ep for ep in self.eps if accept(ep)]
        if not cands:
            return None
        if self.ring is not None:
            members = set(cands)
            return self.ring.walk(h, members.__contains__)
        if self.algorithm == "random":
            return random.choice(cands)
        if self.algorithm == "ewma":
            return two_choices(cands)
        i = self.i
        self.i = i + 1 if i < 0x3FFFFFFF else 0
        if self.algorithm == "least_conn":
            m = len(cands)
            return min((cands[(i + k) % m] for k in range(m)), key=lambda ep: ep.active_requests)
        return cands[i % len(cands)]


def two_choices(eps: list[Endpoint], _rand: Callable[[], float] = random.random,
                _now: Callable[[], float] = time.monotonic) -> Endpoint:
    """load-balance ewma: of two endpoints drawn at random, the one with the lower
    `Endpoint.ewma_cost` (the power of two choices, as ingress-nginx's ewma balancer)."""
    n = len(eps)
    if n == 1:
        return eps[0]
    i = int(_rand() * n)
    j = int(_rand() * (n - 1))
    if j >= i:
        j += 1
    a, b = eps[i], eps[j]
    now = _now()
    return a if a.ewma_cost(now) <= b.ewma_cost(now) else b


# ---------------------------------------------------------------------- weights


class SmoothWeighted:
    """nginx's smooth weighted round robin: exact shares, evenly interleaved (5,1,1 -> a a b a c a a)."""

    __slots__ = ("weights", "current", "total")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = list(weights)
        self.current = [0] * len(self.weights)
        self.total = sum(self.weights)

    def next(self) -> int:
        cur, w = self.current, self.weights
        best, best_v = 0, None
        for k in range(len(w)):
            c = cur[k] + w[k]
            cur[k] = c
            if best_v is None or c > best_v:
                best, best_v = k, c
        cur[best] -= self.total
        return best

    def by_hash(self, h: int) -> int:
        """A weighted choice from a hash value (sticky: the same key, the same slot)."""
        x = h % self.total
        for k, w in enumerate(self.weights):
            if x < w:
                return k
            x -= w
        return len(self.weights) - 1


def weighted_random(weights: Sequence[int]) -> int:
    total = sum(weights)
    x = random.random() * total
    for k, w in enumerate(weights):
        if x < w:
            return k
        x -= w
    return len(weights) - 1


# ---------------------------------------------------------------------- Envoy priority load


def priority_health(healthy: int, total: int, overprovisioning: float = 1.4) -> float:
    """Envoy: health(P) = min(100, overprovisioning x 100 x healthy / total); 0 for an empty priority."""
    if total <= 0:
        return 0.0
    return min(100.0, overprovisioning * 100.0 * healthy / total)


def normalized_total_health(healths: Sequence[float]) -> float:
    return min(100.0, sum(healths))


def priority_loads(healths: Sequence[float]) -> list[int]:
    """Envoy's priority load (percent per priority, summing to 100) from per-priority health.

    load(P0) = min(100, health(P0) x 100 / NTH); load(Px) = min(100 - sum(load(P0..Px-1)),
    health(Px) x 100 / NTH), each rounded to the nearest percent (so the documented tables come
    out exactly: {25,25,20}% healthy -> 36/36/28); any rounding remainder goes to the first
    available priority. No health at all -> everything to P0 (the caller then panics or fails).
    """
    loads = [0] * len(healths)
    if not loads:
        return loads
    nth = normalized_total_health(healths)
    if nth <= 0:
        loads[0] = 100
        return loads
    remaining = 100
    first = -1
    for i, health in enumerate(healths):
        if health > 0 and first < 0:
            first = i
        share = min(remaining, int(health * 100.0 / nth + 0.5))
        loads[i] = share
        remaining -= share
    if remaining:
        loads[first] += remaining
    return loads
