"""Cookie session affinity, the endpoint side: which endpoint a sticky cookie names, and
the cookie value to hand out for the endpoint that served a request.

How it composes with the balancer (`UpstreamManager.pick(..., sticky=value)`): a cookie
naming a *usable* endpoint of the backend -- ready, not failed by active health checks, not
ejected, not already tried by this request -- wins over the balancer; otherwise the normal
pick (priority pools, cluster weights, algorithm, panic) chooses and the response sets a new
cookie (`sticky_cookie`). Clusters play no part in the lookup: an endpoint stays sticky
whichever member cluster it is in.

Modes (ingress-nginx `affinity-mode`):
* persistent -- the cookie names its endpoint; it is honoured for as long as that endpoint
  is usable, whatever the pools and weights say ("maximum stickiness").
* balanced (default) -- as ingress-nginx, sessions are redistributed when a deployment scales
  up. The cookie also carries a random point on the consistent-hash ring of its endpoint's
  cluster (160 points per ready endpoint, crc32 of `cluster/ip:port#i`): when a new pod's
  point captures it, the session moves to that pod, so roughly (n-c)/n of a cluster's
  sessions move when it grows from c to n pods and none move elsewhere. A balanced session
  also leaves an endpoint that the balancer no longer sends new traffic to (a lower priority
  pool after the primary recovered, a cluster without weight while weighted ones are up).
Everything is a pure function of the endpoint sets, so gateway replicas agree.
"""

from __future__ import annotations

import random
import time
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from functools import lru_cache

from gateway.routing.affinity import StickyValue, decode_sticky, endpoint_key
from gateway.types import Endpoint, SessionAffinity
from gateway.upstream.balancer import Balancer, Level, usable

_VNODES = 160
_RING = 1 << 32
Address = tuple[str, int]


@lru_cache(maxsize=65536)
def _vnodes(cluster: str, ip: str, port: int) -> tuple[int, ...]:
    base = f"{cluster}/{ip}:{port}#".encode()
    return tuple(zlib.crc32(base + str(i).encode()) for i in range(_VNODES))


class ClusterRing:
    """Consistent-hash ring of one cluster's ready endpoints: a position belongs to the
    endpoint owning the first point at or after it (wrapping)."""

    __slots__ = ("members", "points", "owners", "_segments")

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.members = list(endpoints)
        pairs = sorted((p, i) for i, ep in enumerate(self.members)
                       for p in _vnodes(ep.cluster, ep.ip, ep.port))
        self.points = [p for p, _ in pairs]
        self.owners = [self.members[i] for _, i in pairs]
        #: Per endpoint: first positions of its segments and their cumulative lengths.
        self._segments: dict[Endpoint, tuple[list[int], list[int]]] = {}

    def owner(self, pos: int) -> Endpoint | None:
        if not self.points:
            return None
        j = bisect_left(self.points, pos)
        return self.owners[j if j < len(self.points) else 0]

    def _segments_of(self, ep: Endpoint) -> tuple[list[int], list[int]]:
        segs = self._segments.get(ep)
        if segs is None:
            pts, owners = self.points, self.owners
            firsts: list[int] = []
            ends: list[int] = []
            total = 0
            for p in _vnodes(ep.cluster, ep.ip, ep.port):
                j = bisect_left(pts, p)
                if j >= len(pts) or owners[j] is not ep:
                    continue  # not a member, or a point shared with another endpoint
                prev = pts[j - 1] if j > 0 else pts[-1] - _RING
                if p > prev:
                    total += p - prev
                    firsts.append(prev + 1)
                    ends.append(total)
            segs = self._segments[ep] = (firsts, ends)
        return segs

    def position(self, ep: Endpoint, rng: random.Random | None = None) -> int | None:
        """A uniformly random position owned by `ep` (None: `ep` is not on the ring)."""
        firsts, ends = self._segments_of(ep)
        if not ends:
            return None
        x = int((rng or random).random() * ends[-1])
        k = bisect_right(ends, x)
        return (firsts[k] + x - (ends[k - 1] if k else 0)) % _RING


class StickyIndex:
    """One backend's endpoints by cookie key, and (balanced mode) its clusters' rings.

    `levels` (the Balancer's) tell which endpoints currently get new traffic; without them
    every usable endpoint counts.
    """

    __slots__ = ("endpoints", "levels", "by_key", "eligible", "_rings", "_old")

    def __init__(self, endpoints: Sequence[Endpoint], levels: Sequence[Level] | None = None,
                 previous: StickyIndex | None = None):
        self.endpoints = endpoints
        self.levels = levels
        self.by_key = {endpoint_key(ep): ep for ep in endpoints}
        self.eligible = None if levels is None else _eligible(levels)
        self._rings: dict[str, ClusterRing] = {}
        #: Rings of the index this one replaces, reused while a cluster's ready set is the same.
        self._old = previous._rings if previous is not None else {}

    def ring(self, cluster: str) -> ClusterRing:
        ring = self._rings.get(cluster)
        if ring is None:
            members = [ep for ep in self.endpoints if ep.ready and ep.cluster == cluster]
            old = self._old.get(cluster)
            if old is not None and len(old.members) == len(members) and all(
                    x is y for x, y in zip(old.members, members, strict=True)):
                ring = old
            else:
                ring = ClusterRing(members)
            self._rings[cluster] = ring
        return ring

    def _ok(self, ep: Endpoint, exclude: frozenset[Address], now: float) -> bool:
        return usable(ep, now) and (ep.ip, ep.port) not in exclude

    def lookup(self, value: str | StickyValue | None, exclude: frozenset[Address] = frozenset(),
               now: float | None = None) -> Endpoint | None:
        """The endpoint this cookie value keeps the request on; None: use the balancer."""
        sv = decode_sticky(value) if isinstance(value, str) else value
        if sv is None:
            return None
        ep = self.by_key.get(sv.key)
        now = time.monotonic() if now is None else now
        if ep is None or not self._ok(ep, exclude, now):
            return None
        if sv.pos is None:  # persistent
            return ep
        eligible = self.eligible
        if eligible is not None and ep not in eligible:
            return None  # e.g. a backup pool while the primary is healthy again
        owner = self.ring(ep.cluster).owner(sv.pos)
        if owner is None or owner is ep or not self._ok(owner, exclude, now) or (
                eligible is not None and owner not in eligible):
            return ep
        return owner  # a newer pod took this session's point: rebalanced

    def issue(self, ep: Endpoint, *, persistent: bool, tag: str = "",
              rng: random.Random | None = None) -> str:
        """A cookie value naming `ep` (balanced: with a random point `ep` owns)."""
        pos = None if persistent else self.ring(ep.cluster).position(ep, rng)
        return StickyValue(endpoint_key(ep), pos, tag).encode()


def _eligible(levels: Sequence[Level]) -> set[Endpoint]:
    """Endpoints the balancer sends new traffic to: levels with load, weighted clusters
    only while one is usable (as Level.pick)."""
    out: set[Endpoint] = set()
    for lv in levels:
        if lv.load <= 0 or not lv.usable:
            continue
        if lv.names:
            names = set(lv.names)
            out.update(ep for ep in lv.usable if ep.cluster in names)
        else:
            out.update(lv.usable)
    return out


def index_of(bal: Balancer) -> StickyIndex:
    """The balancer's index, rebuilt lazily after any update (new endpoints/levels lists)."""
    idx: StickyIndex | None = bal.sticky_index
    if idx is None or idx.endpoints is not bal.endpoints or idx.levels is not bal.levels:
        idx = bal.sticky_index = StickyIndex(bal.endpoints, bal.levels, idx)
    return idx


def sticky_endpoint(candidates: Sequence[Endpoint], cookie_value: str | None, *,
                    exclude: frozenset[Address] = frozenset(),
                    now: float | None = None) -> Endpoint | None:
    """The usable endpoint among `candidates` that `cookie_value` keeps the request on, or
    None (no cookie, not ours, endpoint gone/unready/unhealthy/ejected/excluded)."""
    if not cookie_value:
        return None
    return StickyIndex(candidates).lookup(cookie_value, exclude, now)


def sticky_pick(bal: Balancer, cookie_value: str, exclude: frozenset[Address] = frozenset(),
                now: float | None = None) -> Endpoint | None:
    """`sticky_endpoint` over a balancer's endpoints, with its pools and weights (balanced)."""
    return index_of(bal).lookup(cookie_value, exclude, now)


def sticky_cookie(bal: Balancer | None, endpoint: Endpoint, affinity: SessionAffinity, *,
                  current: str | None = None, retried: bool = False,
                  rng: random.Random | None = None, now: float | None = None) -> str | None:
    """The cookie value to set on a response `endpoint` served; None: set nothing.

    Nothing when the request's cookie (`current`) already names `endpoint` in the right
    mode and for the same backend. After a failed attempt (`retried`) without
    `change_on_failure`, the old cookie is kept while its endpoint is still usable
    (ingress-nginx then keeps the session on it; we retry elsewhere but do not move it).
    """
    tag = affinity.backend_tag
    idx = index_of(bal) if bal is not None else StickyIndex([endpoint])
    cur = decode_sticky(current) if current else None
    if cur is not None and cur.tag == tag:
        if cur.key == endpoint_key(endpoint) and (cur.pos is None) == affinity.persistent:
            return None
        if retried and not affinity.change_on_failure:
            old = idx.by_key.get(cur.key)
            if old is not None and usable(old, time.monotonic() if now is None else now):
                return None
    return idx.issue(endpoint, persistent=affinity.persistent, tag=tag, rng=rng)
