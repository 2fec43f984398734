"""Passive outlier detection (Envoy's consecutive-error detectors, default non-split mode).

The data path reports every attempt. Connect failures, resets and timeouts count as 5xx and
as gateway failures (Envoy maps local-origin errors to 503/504 when not split). Reaching
`consecutive_5xx` ejects (enforcing 100 %); reaching `consecutive_gateway_failure` ejects
with probability `enforcing_consecutive_gateway_failure` % (default 0: never).

An ejection lasts base_ejection_time x times ejected, capped by max(max_ejection_time, base);
the multiplier drops by one each `interval` the endpoint stays in. Ejection is refused when
(ejected+1)/total > max_ejection_percent (unless `always_eject_one_host` and none is
ejected yet: Envoy's opt-in for small clusters) or when it would eject the last non-ejected
endpoint, where "total" is every ready endpoint of the Service port across member clusters
(Envoy's "cluster"; the digest's §4.2 rule and envoy#17504/#27066). A refused ejection is
retried on the next failure (Envoy retries only after a success resets the count). A
successful active health check un-ejects at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.types import Endpoint, Outcome, OutlierPolicy

log = logging.getLogger("gateway.upstream.outlier")

_GATEWAY_STATUSES = frozenset((502, 503, 504))
_LOCAL_ORIGIN = frozenset(("connect_failure", "reset", "timeout", "gateway_error"))


@dataclass(eq=False)
class _State:
    c5xx: int = 0
    cgw: int = 0
    times: int = 0  # ejection multiplier
    expire: asyncio.TimerHandle | None = None
    decay: asyncio.TimerHandle | None = None


class OutlierDetector:
    """Per-endpoint consecutive-failure counters and ejections."""

    def __init__(
        self,
        *,
        policy_of: Callable[[Endpoint], OutlierPolicy | None],
        domains_of: Callable[[Endpoint], Sequence[Sequence[Endpoint]]],
        on_change: Callable[[Endpoint], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy_of = policy_of
        self.domains_of = domains_of
        self.on_change = on_change
        self.clock = clock
        self._states: dict[Endpoint, _State] = {}
        #: cluster -> ejections made; reason -> ejections refused.
        self.ejections: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    # -------------------------------------------------------------------- data path

    def report(self, ep: Endpoint, outcome: Outcome, status: int | None = None) -> None:
        if outcome == "success" and (status is None or status < 500):
            st = self._states.get(ep)
            if st is not None and (st.c5xx or st.cgw):
                st.c5xx = st.cgw = 0
            return
        st = self._states.get(ep)
        if st is None:
            if self.policy_of(ep) is None:
                return  # no backend holds it (any more): nothing to eject
            st = self._states[ep] = _State()
        st.c5xx += 1
        if outcome in _LOCAL_ORIGIN or status in _GATEWAY_STATUSES:
            st.cgw += 1
        else:
            st.cgw = 0
        if ep.ejected_until > self.clock():
            return
        p = self.policy_of(ep)
        if p is None:
            return
        if p.consecutive_5xx > 0 and st.c5xx >= p.consecutive_5xx:
            self._try_eject(ep, st, p, "consecutive_5xx")
        elif (p.consecutive_gateway_failure > 0 and st.cgw >= p.consecutive_gateway_failure
              and random.random() * 100 < p.enforcing_consecutive_gateway_failure):
            self._try_eject(ep, st, p, "consecutive_gateway_failure")

    # -------------------------------------------------------------------- ejection

    def _refusal(self, ep: Endpoint, p: OutlierPolicy, now: float) -> str | None:
        for domain in self.domains_of(ep) or [[ep]]:
            ready = [e for e in domain if e.ready]
            total = len(ready)
            ejected = sum(1 for e in ready if e.ejected_until > now and e is not ep)
            if ejected + 1 >= total:
                return "last_endpoint"
            if (ejected + 1) * 100 > p.max_ejection_percent * total and not (
                    p.always_eject_one_host and ejected == 0):
                return "max_ejection_percent"
        return None

    def _try_eject(self, ep: Endpoint, st: _State, p: OutlierPolicy, reason: str) -> bool:
        now = self.clock()
        refusal = self._refusal(ep, p, now)
        if refusal is not None:
            self.refused[refusal] += 1
            return False
        st.times += 1
        duration = min(p.base_ejection_time * st.times, max(p.max_ejection_time, p.base_ejection_time))
        ep.ejected_until = now + duration
        st.c5xx = st.cgw = 0
        self._cancel(st)
        loop = asyncio.get_running_loop()
        st.expire = loop.call_later(duration, self._expire, ep)
        self.ejections[ep.cluster] += 1
        log.warning("ejected %s/%s:%d for %.1fs (%s, ejection #%d)", ep.cluster, ep.ip, ep.port,
                    duration, reason, st.times)
        self.on_change(ep)
        return True

    def _expire(self, ep: Endpoint) -> None:
        st = self._states.get(ep)
        if st is None:
            return
        st.expire = None
        self._back_in(ep, st)

    def _back_in(self, ep: Endpoint, st: _State) -> None:
        ep.ejected_until = 0.0
        st.c5xx = st.cgw = 0
        p = self.policy_of(ep)
        if st.times > 0:
            interval = p.interval if p is not None else OutlierPolicy().interval
            st.decay = asyncio.get_running_loop().call_later(interval, self._decay, ep, interval)
        log.info("endpoint %s/%s:%d back in rotation", ep.cluster, ep.ip, ep.port)
        self.on_change(ep)

    def _decay(self, ep: Endpoint, interval: float) -> None:
        st = self._states.get(ep)
        if st is None:
            return
        st.decay = None
        if ep.ejected_until > self.clock() or st.times <= 0:
            return
        st.times -= 1
        if st.times > 0:
            st.decay = asyncio.get_running_loop().call_later(interval, self._decay, ep, interval)

    def uneject(self, ep: Endpoint) -> bool:
        """A successful active health check: back in at once (counters cleared)."""
        st = self._states.get(ep)
        if st is None or ep.ejected_until <= 0:
            return False
        self._cancel(st)
        self._back_in(ep, st)
        return True

    @staticmethod
    def _cancel(st: _State) -> None:
        for h in (st.expire, st.decay):
            if h is not None:
                h.cancel()
        st.expire = st.decay = None

    # -------------------------------------------------------------------- bookkeeping

    def forget(self, ep: Endpoint) -> None:
        """The endpoint is gone: drop its counters and timers."""
        st = self._states.pop(ep, None)
        if st is not None:
            self._cancel(st)

    def times_ejected(self, ep: Endpoint) -> int:
        st = self._states.get(ep)
        return st.times if st else 0

    def consecutive(self, ep: Endpoint) -> tuple[int, int]:
        st = self._states.get(ep)
        return (st.c5xx, st.cgw) if st else (0, 0)

    def stop(self) -> None:
        for st in self._states.values():
            self._cancel(st)

    @property
    def ejected_now(self) -> int:
        now = self.clock()
        return sum(1 for ep in self._states if ep.ejected_until > now)
