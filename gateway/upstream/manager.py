"""The upstream side of the gateway: implements `gateway.types.ClusterManager`.

Glue between discovery (which endpoints exist), the health checker and outlier detector
(which are usable) and one `Balancer` per BackendRef (which one gets this request).
Every change -- endpoints, health verdicts, ejections, a new route table -- rebuilds only
the balancers it touches; `pick()` never computes anything that a change could have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from gateway.types import (
    BackendPolicy,
    BackendRef,
    ClusterManager,
    Endpoint,
    HealthCheckPolicy,
    Outcome,
    OutlierPolicy,
    RequestView,
    SessionAffinity,
)
from gateway.upstream.affinity import sticky_cookie, sticky_pick
from gateway.upstream.balancer import Balancer
from gateway.upstream.discovery import EndpointCatalog, ServiceKey
from gateway.upstream.health import HealthChecker
from gateway.upstream.lb import NOTHING
from gateway.upstream.outlier import OutlierDetector
from mcs_controller.access.api import ClusterClient

log = logging.getLogger("gateway.upstream")

BaseKey = tuple[str, str, int | str]  # (namespace, service, port): one Envoy "cluster"
_DEFAULT_POLICY: Final = BackendPolicy()
_ID_CACHE: Final = 4096


def _base(ref: BackendRef) -> BaseKey:
    return (ref.namespace, ref.service, ref.port)


def narrow(endpoints: list[Endpoint], ref: BackendRef) -> list[Endpoint]:
    """BackendRef.cluster restricts strictly; BackendRef.subset selects pods carrying all its
    labels, failing open to the whole (cluster-restricted) Service when no ready endpoint matches."""
    eps = endpoints
    if ref.cluster is not None:
        eps = [ep for ep in eps if ep.cluster == ref.cluster]
    if ref.subset:
        subset = ref.subset
        matched = [ep for ep in eps if all(ep.labels.get(k) == v for k, v in subset)]
        if any(ep.ready for ep in matched):
            eps = matched
    return eps


class UpstreamManager(ClusterManager):
    """Endpoints of every member cluster, their health, and load balancing per backend.

    Lifecycle: `await start()` (informers; health checks run only while started),
    `sync(backends)` whenever the route table changes (any time, also before start),
    `pick()` / `report()` per attempt, `await stop()`.
    """

    def __init__(
        self,
        clients: Mapping[str, ClusterClient],
        *,
        watch_pods: bool = True,
        namespace: str | None = None,
        health_check_concurrency: int = 64,
        informer_backoff_max: float = 5.0,
    ) -> None:
        self.catalog = EndpointCatalog(clients, watch_pods=watch_pods, namespace=namespace,
                                       on_change=self._on_services, backoff_max=informer_backoff_max)
        self.health = HealthChecker(self._on_health, concurrency=health_check_concurrency)
        self.outlier = OutlierDetector(policy_of=self._outlier_policy, domains_of=self._domains,
                                       on_change=self._on_endpoint)
        self._policies: dict[BackendRef, BackendPolicy] = {}
        self._balancers: dict[BackendRef, Balancer] = {}
        self._bases: dict[BaseKey, list[Endpoint]] = {}
        self._refs_by_service: dict[ServiceKey, set[BackendRef]] = {}
        self._refs_of_ep: dict[Endpoint, set[BackendRef]] = {}
        #: How many bases hold each endpoint: one that none holds is forgotten. Kept as the
        #: bases change, so an EndpointSlice event costs its Service's endpoints, not the
        #: whole fleet's (2000 Services of 10 endpoints: 23 ms a change when recounted).
        self._held: dict[Endpoint, int] = {}
        #: Endpoints whose backends all let go of them since the last `_after_change`.
        self._orphans: list[Endpoint] = []
        #: id(ref) -> (ref, balancer): the route table hands out the same BackendRef objects
        #: per request, and an identity hit skips hashing the dataclass (~0.3 us per pick).
        self._by_id: dict[int, tuple[BackendRef, Balancer]] = {}
        #: The two refs picked for last, checked by identity before `_by_id` (whose int keys
        #: cost a boxing and a compare): a request and its mirror copy alternate two.
        self._ref0: BackendRef | None = None
        self._bal0: Balancer | None = None
        self._ref1: BackendRef | None = None
        self._bal1: Balancer | None = None
        self._started = False
        #: Balancer rebuilds done (tests, metrics).
        self.rebuilds = 0

    # -------------------------------------------------------------------- lifecycle

    async def start(self, *, wait: bool = True, within: float | None = 10.0) -> bool:
        """Start the informers; with `wait`, return once every member listed (False: timed out)."""
        await self.catalog.start()
        self._started = True
        self._reconcile_health(list(self._refs_of_ep))
        return await self.catalog.wait_synced(within) if wait else self.catalog.synced

    async def stop(self) -> None:
        self._started = False
        self.outlier.stop()
        await self.health.stop()
        await self.catalog.stop()

    @property
    def ready(self) -> bool:
        """Every member cluster's informers have completed their first list."""
        return self.catalog.synced

    # -------------------------------------------------------------------- route table

    def sync(self, backends: Mapping[BackendRef, BackendPolicy]) -> None:
        """Track exactly these backends under these policies (called on every route-table build)."""
        released: list[Endpoint] = []
        for ref in [r for r in self._balancers if r not in backends]:
            released.extend(self._drop(ref))
        policies = self._policies  # (a new ref has none: None != its policy)
        changed = [ref for ref, pol in backends.items()
                   if (old := policies.get(ref)) is not pol and old != pol]
        for ref in changed:
            self._add(ref, backends[ref])
        for bk in {_base(r) for r in changed} - self._bases.keys():
            self._set_base(bk, self.catalog.resolve(*bk))  # (a new base releases nothing)
        live = {_base(r) for r in backends}  # (every ref tracked now is one of them)
        for bk in [bk for bk in self._bases if bk not in live]:
            released.extend(self._set_base(bk, None))
        self._rebuild(changed, time.monotonic())
        self._after_change(changed, released)

    def _set_base(self, bk: BaseKey, eps: list[Endpoint] | None) -> list[Endpoint]:
        """Give a base these endpoints (None: drop it); returns those no base holds now."""
        held = self._held
        for ep in eps or ():
            held[ep] = held.get(ep, 0) + 1
        released: list[Endpoint] = []
        for ep in self._bases.get(bk, ()):
            n = held[ep] - 1
            if n:
                held[ep] = n
            else:
                del held[ep]
                released.append(ep)
        if eps is None:
            self._bases.pop(bk, None)
        else:
            self._bases[bk] = eps
        return released

    def _add(self, ref: BackendRef, policy: BackendPolicy) -> None:
        self._forget_ids()
        self._policies[ref] = policy
        old = self._balancers.get(ref)
        bal = Balancer(policy)
        if old is not None:
            bal.endpoints = old.endpoints
        self._balancers[ref] = bal
        self._refs_by_service.setdefault((ref.namespace, ref.service), set()).add(ref)

    def _drop(self, ref: BackendRef) -> list[Endpoint]:
        self._forget_ids()
        bal = self._balancers.pop(ref)
        self._policies.pop(ref, None)
        for ep in bal.endpoints:
            refs = self._refs_of_ep.get(ep)
            if refs is not None:
                refs.discard(ref)
                if not refs:
                    self._orphans.append(ep)
        skey = (ref.namespace, ref.service)
        refs = self._refs_by_service.get(skey)
        if refs is not None:
            refs.discard(ref)
            if not refs:
                del self._refs_by_service[skey]
        return bal.endpoints

    def backends(self) -> dict[BackendRef, BackendPolicy]:
        return dict(self._policies)

    # -------------------------------------------------------------------- changes

    def _on_services(self, dirty: set[ServiceKey]) -> None:
        """Discovery: these Services' endpoints may have changed."""
        refs: list[BackendRef] = []
        released: list[Endpoint] = []
        for skey in dirty:
            srefs = self._refs_by_service.get(skey)
            if not srefs:
                continue
            for bk in {_base(r) for r in srefs}:
                released.extend(self._set_base(bk, self.catalog.resolve(*bk)))
            refs.extend(srefs)
        if refs:
            self._rebuild(refs, time.monotonic())
            self._after_change(refs, released)

    def _on_endpoint(self, ep: Endpoint) -> None:
        """Health or ejection of one endpoint changed: rebuild the backends holding it."""
        refs = self._refs_of_ep.get(ep)
        if refs:
            self._rebuild(list(refs), time.monotonic())

    def _on_health(self, ep: Endpoint, ok: bool, changed: bool) -> None:
        if ok and self.outlier.uneject(ep):
            return  # uneject already rebuilt
        if changed:
            self._on_endpoint(ep)

    def _rebuild(self, refs: list[BackendRef], now: float) -> None:
        for ref in refs:
            bal = self._balancers.get(ref)
            if bal is None:
                continue
            members = narrow(self._bases.get(_base(ref), []), ref)
            kept = set(members)
            for ep in bal.endpoints:
                if ep in kept:
                    continue
                s = self._refs_of_ep.get(ep)
                if s is not None:
                    s.discard(ref)
                    if not s:  # (a health or ejection rebuild keeps them all: none)
                        self._orphans.append(ep)
            for ep in members:
                self._refs_of_ep.setdefault(ep, set()).add(ref)
            bal.update(members, now)
            self.rebuilds += 1

    def _after_change(self, refs: list[BackendRef], released: Sequence[Endpoint] = ()) -> None:
        """Forget endpoints no base holds (`released` by `_set_base`: the catalog forgets them
        too) or no backend does (`_orphans`); (re)assign health checks. Only the endpoints
        the change touched are looked at."""
        for ep in released:
            if ep not in self._held:  # (a later base may have taken it back)
                self.catalog.release(ep)
                self._forget(ep)
        orphans, self._orphans = self._orphans, []
        for ep in orphans:
            if not self._refs_of_ep.get(ep, True):  # (absent: forgotten above)
                self._forget(ep)
        touched = {ep for r in refs if (b := self._balancers.get(r)) is not None for ep in b.endpoints}
        touched.update(ep for ep in released if ep in self._refs_of_ep)
        self._reconcile_health(touched)

    def _forget(self, ep: Endpoint) -> None:
        """No backend holds `ep` now: stop its checks and timers; its verdicts end with them."""
        self._refs_of_ep.pop(ep, None)
        self.health.remove(ep)
        self.outlier.forget(ep)
        ep.ejected_until = 0.0

    def _reconcile_health(self, eps: Any) -> None:
        if not self._started:
            return
        reset: set[BackendRef] = set()
        for ep in eps:
            want = self._health_policy(ep) if ep.ready else None
            if want is None:
                if ep.healthy is not None:  # a verdict nobody asks for any more
                    reset.update(self._refs_of_ep.get(ep, ()))
                self.health.remove(ep)
            else:
                self.health.set(ep, *want)
        if reset:
            self._rebuild(list(reset), time.monotonic())

    # -------------------------------------------------------------------- per endpoint policy

    def _owner(self, ep: Endpoint) -> BackendRef | None:
        refs = self._refs_of_ep.get(ep)
        return min(refs, key=str) if refs else None

    def _health_policy(self, ep: Endpoint) -> tuple[HealthCheckPolicy, str] | None:
        """The first (by name) backend holding `ep` that asks for health checks decides."""
        for ref in sorted(self._refs_of_ep.get(ep, ()), key=str):
            hc = self._policies[ref].health_check
            if hc is not None:
                return hc, hc.host or ref.service
        return None

    def _outlier_policy(self, ep: Endpoint) -> OutlierPolicy | None:
        ref = self._owner(ep)
        return self._policies[ref].outlier if ref is not None else None

    def _domains(self, ep: Endpoint) -> list[list[Endpoint]]:
        """The whole Service port (all clusters, no subset) of every backend holding `ep`."""
        keys = {_base(r) for r in self._refs_of_ep.get(ep, ())}
        return [self._bases[k] for k in keys if k in self._bases]

    # -------------------------------------------------------------------- data path

    def pick(
        self,
        backend: BackendRef,
        request: RequestView,
        *,
        exclude: frozenset[tuple[str, int]] = NOTHING,
        avoid_clusters: frozenset[str] = NOTHING,
        sticky: str | None = None,
    ) -> Endpoint | None:
        """`sticky`: the request's affinity cookie value; when it names a usable endpoint of
        this backend (not in `exclude`) that endpoint wins over the balancer."""
        bal = self._bal0
        if backend is not self._ref0 or bal is None:
            bal = self._bal1
            if backend is not self._ref1 or bal is None:
                bal = self._balancer_of(backend)
            self._ref1, self._bal1 = self._ref0, self._bal0
            self._ref0, self._bal0 = backend, bal
        if sticky is not None:
            ep = sticky_pick(bal, sticky, exclude)
            if ep is not None:
                return ep
        return bal.pick(request, exclude, avoid_clusters)

    def _balancer_of(self, backend: BackendRef) -> Balancer:
        hit = self._by_id.get(id(backend))
        if hit is not None and hit[0] is backend:
            return hit[1]
        known = self._balancers.get(backend)
        bal = known if known is not None else self._track(backend)
        if len(self._by_id) >= _ID_CACHE:
            self._forget_ids()
        self._by_id[id(backend)] = (backend, bal)
        return bal

    def _forget_ids(self) -> None:
        self._by_id.clear()
        self._ref0 = self._bal0 = self._ref1 = self._bal1 = None

    def sticky_cookie(
        self,
        backend: BackendRef,
        endpoint: Endpoint,
        affinity: SessionAffinity,
        *,
        current: str | None = None,
        retried: bool = False,
    ) -> str | None:
        """The affinity cookie value for a response `endpoint` served (None: set no cookie,
        the request's `current` one still holds). See gateway/upstream/affinity.py."""
        return sticky_cookie(self._balancers.get(backend), endpoint, affinity,
                             current=current, retried=retried)

    def _track(self, ref: BackendRef) -> Balancer:
        """A backend the route table did not announce (e.g. a mirror): track it with defaults."""
        log.info("tracking backend %s on demand with the default policy", ref)
        self._add(ref, _DEFAULT_POLICY)
        bk = _base(ref)
        if bk not in self._bases:
            self._set_base(bk, self.catalog.resolve(*bk))  # (a new base releases nothing)
        self._rebuild([ref], time.monotonic())
        self._after_change([ref])
        return self._balancers[ref]

    def report(self, endpoint: Endpoint, outcome: Outcome, status: int | None = None) -> None:
        self.outlier.report(endpoint, outcome, status)

    # -------------------------------------------------------------------- admin and metrics

    def describe(self, backend: BackendRef) -> list[dict[str, Any]]:
        """Every endpoint of the backend (ready or not) with its state, for /routes."""
        bal = self._balancers.get(backend)
        if bal is None:
            return []
        now = time.monotonic()
        level_of = {ep: i for i, lv in enumerate(bal.levels) for ep in lv.ready}
        out = []
        for ep in sorted(bal.endpoints, key=lambda e: (e.cluster, e.ip, e.port)):
            ejected = ep.ejected_until > now
            out.append({
                "cluster": ep.cluster, "ip": ep.ip, "port": ep.port, "ready": ep.ready,
                "healthy": ep.healthy, "ejected": ejected,
                "ejected_for": round(ep.ejected_until - now, 3) if ejected else 0.0,
                "active": ep.active_requests, "priority": level_of.get(ep),
                **({"ewma_ms": round(ep.ewma_now(now) * 1000, 3)}
                   if bal.policy.algorithm == "ewma" else {}),
                "health_checked": ep in self.health,
            })
        return out

    def summary(self, backend: BackendRef) -> dict[str, Any]:
        """Per-backend balancing state: algorithm, priority loads, panic flags."""
        bal = self._balancers.get(backend)
        if bal is None:
            return {}
        p = bal.policy
        return {"algorithm": p.algorithm, "hash_by": p.hash_by,
                "cluster_weights": dict(p.cluster_weights),
                "priority_pools": [list(x) for x in p.priority_pools],
                "graded_spillover": p.graded_spillover,
                "priority_load": bal.loads(), "panic": bal.panicking()}

    def counters(self) -> dict[str, dict[Any, int]]:
        """Monotonic counters for /metrics, keyed by label values."""
        return {
            "ejections_total": dict(self.outlier.ejections),  # cluster -> n
            "ejections_refused_total": dict(self.outlier.refused),  # reason -> n
            "health_checks_total": dict(self.health.results),  # (cluster, success|failure) -> n
            "health_transitions_total": dict(self.health.transitions),  # (cluster, verdict) -> n
        }

    def gauges(self) -> dict[str, int]:
        # (Read by the scrape, in a worker thread: copies first, each one C call.)
        eps: set[Endpoint] = set()
        for balancer in list(self._balancers.values()):
            eps.update(balancer.endpoints)
        now = time.monotonic()
        return {
            "backends": len(self._balancers),
            "endpoints": len(eps),
            "endpoints_ready": sum(1 for ep in eps if ep.ready),
            "endpoints_unhealthy": sum(1 for ep in eps if ep.healthy is False),
            "endpoints_ejected": sum(1 for ep in eps if ep.ejected_until > now),
            "health_checked": len(self.health),
        }
