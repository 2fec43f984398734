"""One backend's load balancer: priority levels, panic, cluster weights, then an endpoint.

`update()` runs on every change (endpoints, health, ejections) and precomputes everything;
`pick()` runs per request and only walks the precomputed structures.

Order of decisions (Envoy's, with our cluster-level names):
1. priority level: strict (the first pool with a healthy endpoint takes all) or graded
   (Envoy's priority load with the overprovisioning factor);
2. panic: a level whose healthy share is below the threshold balances over all its endpoints,
   ignoring health -- only while the normalized total health is below 100 %, as in Envoy;
3. cluster weights (if any): smooth weighted round robin over the level's weighted clusters,
   each weight scaled by the cluster's availability (Envoy locality weights:
   min(1, overprovisioning x healthy/total)); clusters with weight 0 or missing get traffic only
   when no weighted cluster has a usable endpoint (failover, not strict);
4. the algorithm within the chosen set: round robin, least_conn, random or consistent hash.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import reduce
from math import gcd
from typing import Any, Final

from gateway.types import BackendPolicy, Endpoint, RequestView
from gateway.upstream.lb import (
    NOTHING,
    Accept,
    HashRing,
    KeyFunc,
    Pool,
    SmoothWeighted,
    compile_hash_key,
    hash_key,
    mix,
    normalized_total_health,
    priority_health,
    priority_loads,
    weighted_random,
)


def usable(ep: Endpoint, now: float) -> bool:
    """Healthy for balancing: ready, not failed by active checks (None counts), not ejected."""
    return ep.ready and ep.healthy is not False and ep.ejected_until <= now


RingOf = Callable[[list[Endpoint]], HashRing]

#: Longest precomputed weighted cycle (entries); longer ones run nginx's SWRR step by step.
_MAX_CYCLE: Final = 4096


def _interleave(eps: list[Endpoint]) -> list[Endpoint]:
    """Alternate clusters (a1 b1 a2 b2 a3): round robin then spreads bursts across clusters."""
    by: dict[str, list[Endpoint]] = {}
    for ep in eps:
        by.setdefault(ep.cluster, []).append(ep)
    if len(by) < 2:
        return eps
    lists = [by[c] for c in sorted(by)]
    out: list[Endpoint] = []
    for i in range(max(map(len, lists))):
        out.extend(lst[i] for lst in lists if i < len(lst))
    return out


class Level:
    """One priority level: its endpoints, which are usable, and how to pick among them."""

    __slots__ = ("ready", "healthy", "panic", "load", "usable", "pool", "weighted", "names",
                 "swrr", "seq", "i")

    def __init__(self, ready: list[Endpoint], healthy: list[Endpoint]) -> None:
        self.ready = ready
        self.healthy = healthy
        self.panic = False
        self.load = 0
        self.usable: list[Endpoint] = healthy
        self.pool: Pool | None = None  # all usable endpoints (no weights, or failover)
        self.weighted: list[Pool] = []  # per weighted cluster with usable endpoints
        self.names: list[str] = []
        self.swrr: SmoothWeighted | None = None
        #: One full smooth-weighted cycle of cluster pools, when short: a pick is an index.
        self.seq: list[Pool] | None = None
        self.i = 0

    def build(self, policy: BackendPolicy, old: Level | None, ring_of: RingOf) -> None:
        algo = policy.algorithm
        hashing = algo == "hash"
        self.usable = self.ready if self.panic else self.healthy
        if not self.usable:
            return
        self.pool = Pool(self.usable, algo, old.pool.i if old and old.pool else 0,
                         ring_of(self.ready) if hashing else None)
        weights = policy.cluster_weights
        if not weights:
            return
        by_cluster: dict[str, list[Endpoint]] = {}
        for ep in self.usable:
            by_cluster.setdefault(ep.cluster, []).append(ep)
        ready_of: dict[str, list[Endpoint]] = {}
        for ep in self.ready:
            ready_of.setdefault(ep.cluster, []).append(ep)
        eff: list[int] = []
        for cluster in sorted(by_cluster):
            w = weights.get(cluster, 0)
            if w <= 0:
                continue
            eps = by_cluster[cluster]
            avail = 1.0 if self.panic else min(
                1.0, policy.overprovisioning_factor * len(eps) / len(ready_of[cluster]))
            self.names.append(cluster)
            self.weighted.append(Pool(eps, algo, ring=ring_of(ready_of[cluster]) if hashing else None))
            eff.append(max(1, round(w * 1000 * avail)))
        # No weighted cluster usable: `pool` then holds exactly the unweighted clusters'
        # endpoints, which take over (failover, not strict).
        if eff:
            self.swrr = SmoothWeighted(eff)
            g = reduce(gcd, eff)
            if sum(eff) // g <= _MAX_CYCLE:
                cycle = SmoothWeighted([w // g for w in eff])
                self.seq = [self.weighted[cycle.next()] for _ in range(cycle.total)]

    def pick(self, h: int) -> Endpoint | None:
        swrr = self.swrr
        if swrr is not None:
            seq = self.seq
            if self.pool.ring is not None:  # type: ignore[union-attr]
                return self.weighted[swrr.by_hash(mix(h))].pick(h)
            if seq is not None:
                i = self.i
                self.i = i + 1 if i < 0x3FFFFFFF else 0
                return seq[i % len(seq)].pick(h)
            return self.weighted[swrr.next()].pick(h)
        pool = self.pool
        return pool.pick(h) if pool is not None else None

    def pick_from(self, h: int, accept: Accept) -> Endpoint | None:
        """Retries: weighted clusters with an accepted endpoint, else the rest, else None."""
        if self.pool is None:
            return None
        if self.swrr is not None:
            cands = [k for k, p in enumerate(self.weighted) if any(accept(ep) for ep in p.eps)]
            if cands:
                k = cands[weighted_random([self.swrr.weights[c] for c in cands])]
                return self.weighted[k].pick_from(h, accept)
            names = set(self.names)
            return self.pool.pick_from(h, lambda ep: ep.cluster not in names and accept(ep))
        return self.pool.pick_from(h, accept)


class Balancer:
    """Picks endpoints of one backend under one BackendPolicy."""

    def __init__(self, policy: BackendPolicy) -> None:
        self.policy = policy
        #: Cookie affinity's lookup index for these endpoints (gateway/upstream/affinity.py).
        self.sticky_index: Any = None
        self._key: KeyFunc | None = None
        if policy.algorithm == "hash":
            try:
                self._key = compile_hash_key(policy.hash_by or "$request_uri")
            except ValueError:
                self._key = compile_hash_key("$request_uri")
        self.levels: list[Level] = []
        self._single: Level | None = None
        self._chooser: SmoothWeighted | None = None
        self._loaded: list[Level] = []
        self.endpoints: list[Endpoint] = []
        #: Hash rings by the identity of the endpoint list they cover, reused across updates.
        self._rings: dict[tuple[int, ...], HashRing] = {}

    # -------------------------------------------------------------------- on change

    def update(self, endpoints: Sequence[Endpoint], now: float | None = None) -> None:
        """Recompute from this backend's endpoints (ready or not; only ready ones are used)."""
        now = time.monotonic() if now is None else now
        p = self.policy
        self.endpoints = list(endpoints)
        if p.algorithm == "ewma":  # the data path times these pods' attempts from now on
            for ep in self.endpoints:
                ep.ewma_on = True
        ready = _interleave([ep for ep in endpoints if ep.ready])
        groups: list[list[Endpoint]]
        if p.priority_pools:
            index = {c: i for i, pool in enumerate(p.priority_pools) for c in pool}
            last = len(p.priority_pools)  # clusters named in no pool: an implicit last pool
            groups = [[] for _ in range(last + 1)]
            for ep in ready:
                groups[index.get(ep.cluster, last)].append(ep)
            if not groups[-1]:
                groups.pop()
        else:
            groups = [ready]
        old = self.levels
        levels = [Level(g, [ep for ep in g if usable(ep, now)]) for g in groups]
        healths = [priority_health(len(lv.healthy), len(lv.ready), p.overprovisioning_factor)
                   for lv in levels]
        nth = normalized_total_health(healths)
        if p.graded_spillover:
            loads = priority_loads(healths)
        else:  # strict: the first level with a healthy endpoint takes everything
            loads = [0] * len(levels)
            first = next((i for i, lv in enumerate(levels) if lv.healthy), None)
            if first is not None:
                loads[first] = 100
        if nth <= 0 and levels:
            # Nothing healthy: Envoy sends all to P0 in panic; we pick the first non-empty level.
            loads = [0] * len(levels)
            loads[next((i for i, lv in enumerate(levels) if lv.ready), 0)] = 100
        rings: dict[tuple[int, ...], HashRing] = {}

        def ring_of(eps: list[Endpoint]) -> HashRing:
            key = tuple(map(id, eps))  # the ring holds eps, so these ids stay unique
            ring = rings.get(key) or self._rings.get(key) or HashRing(eps)
            rings[key] = ring
            return ring

        for i, lv in enumerate(levels):
            lv.load = loads[i]
            if p.panic_threshold > 0 and nth < 100 and lv.ready:
                lv.panic = 100.0 * len(lv.healthy) / len(lv.ready) < p.panic_threshold
            lv.build(p, old[i] if i < len(old) else None, ring_of)
        self._rings = rings
        self.levels = levels
        self._loaded = [lv for lv in levels if lv.load > 0 and lv.usable]
        self._single = self._loaded[0] if len(self._loaded) == 1 else None
        self._chooser = SmoothWeighted([lv.load for lv in self._loaded]) if len(self._loaded) > 1 else None

    # -------------------------------------------------------------------- per request

    def _hash(self, request: RequestView) -> int:
        key = self._key
        return hash_key(key(request)) if key is not None else 0

    def _level(self, h: int) -> Level | None:
        single = self._single
        if single is not None:
            return single
        chooser = self._chooser
        if chooser is None:
            return None
        k = chooser.by_hash(mix(mix(h))) if self._key is not None else chooser.next()
        return self._loaded[k]

    def pick(
        self,
        request: RequestView,
        exclude: frozenset[tuple[str, int]] = NOTHING,
        avoid_clusters: frozenset[str] = NOTHING,
    ) -> Endpoint | None:
        h = self._hash(request) if self._key is not None else 0
        level = self._level(h)
        if not exclude and not avoid_clusters:
            return level.pick(h) if level is not None else None
        return self._pick_retry(h, level, exclude, avoid_clusters)

    def _pick_retry(
        self, h: int, first: Level | None, exclude: frozenset[tuple[str, int]], avoid: frozenset[str]
    ) -> Endpoint | None:
        """Not an excluded address; another cluster than `avoid` if any level has one usable.

        Levels are tried in order: the one the normal pick would use, then the others by
        priority (a retry may spill to a lower pool rather than fail).
        """
        order = ([first] if first is not None else []) + [lv for lv in self.levels if lv is not first]

        def fresh(ep: Endpoint) -> bool:
            return (ep.ip, ep.port) not in exclude and ep.cluster not in avoid

        def not_tried(ep: Endpoint) -> bool:
            return (ep.ip, ep.port) not in exclude

        for accept in ((fresh, not_tried) if avoid else (not_tried,)):
            for lv in order:
                ep = lv.pick_from(h, accept)
                if ep is not None:
                    return ep
        return None

    # -------------------------------------------------------------------- introspection

    def loads(self) -> list[int]:
        return [lv.load for lv in self.levels]

    def panicking(self) -> list[bool]:
        return [lv.panic for lv in self.levels]
