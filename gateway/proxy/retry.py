"""Failures, retries and timeouts of an exchange (second step of the Exchange class).

A failed attempt (connect error or timeout, reset or invalid response before any byte
reached the client, a per-try timeout, a retriable status) is retried on another endpoint
-- excluding the addresses tried, avoiding their clusters when RetryPolicy.prefer_other_cluster
-- within RetryPolicy.attempts and Timeouts.total, after a fully jittered exponential backoff
(Envoy: retry N waits U[0, min(max, base * (2^N - 1)))). The first retry of a request whose
attempt never reached the pod (connect refused or timed out, certificate refused) goes at
once, as nginx's proxy_next_upstream does: waiting cannot help another endpoint, and a
cluster whose pods all refuse would otherwise add the backoff to every request it is picked
for while outlier detection may not eject them (max_ejection_percent). Non-idempotent
methods (POST, PATCH, LOCK) are retried only when the request never left (connect failure) unless
RetryPolicy.non_idempotent. A request whose body outgrew the replay buffer is not retried once
its body started flowing. A pooled keep-alive connection that turns out closed gets one free
retry (not counted, not reported: the upstream closed an idle connection, it did not fail).

Timeouts: connect (CONNECTING), send (idle between request body writes), per-try (from the
end of the request to the response head; Timeouts.read when unset), read (idle between
response reads), total. Idle ones are checked lazily: the deadline fires, progress since
the last check pushes it on.
"""

from __future__ import annotations

import random
from typing import Final

from gateway.proxy.exchange_base import ExchangeBase
from gateway.proxy.states import (
    BACKOFF,
    CONNECTING,
    DRAINING,
    INF,
    PAUSE_UPSTREAM,
    SENT,
    STREAMING,
)

#: cause -> (status, short text, outcome reported to the cluster manager). A certificate the
#: route's proxy-ssl-* settings refuse says nothing of the pod's health: another route to the
#: same Service may accept it, so it is not held against the pod.
CAUSES: Final[dict[str, tuple[int, str, str | None]]] = {
    "connect_failure": (502, "upstream connect error", "connect_failure"),
    "certificate": (502, "upstream certificate not accepted", None),
    "connect_timeout": (504, "upstream connect timeout", "timeout"),
    "reset": (502, "upstream connection reset before response", "reset"),
    "invalid_response": (502, "invalid response from upstream", "gateway_error"),
    "timeout": (504, "upstream response timeout", "timeout"),
    "send_timeout": (504, "upstream send timeout", "timeout"),
}


#: Failures of an attempt that never reached the pod: the first retry after one goes at once.
_NEVER_LEFT: Final = frozenset({"connect_failure", "connect_timeout", "certificate"})


class RetrySide(ExchangeBase):
    # -- failures, retries, timeouts ---------------------------------------------------------

    def _failed(self, cause: str, detail: str) -> None:
        """An attempt failed before any response byte reached the client."""
        status, text, outcome = CAUSES[cause]
        stale = (cause == "reset" and self.stale_ok and self.free_retry)
        if stale:  # a pooled keep-alive connection the upstream had closed: not its fault
            self.free_retry = False
            self._end_attempt(None, None)
            self.attempts -= 1
            self.tried.pop()  # type: ignore[union-attr]
        else:
            self._end_attempt(outcome, None, cause)
        self.last_error = (status, f"{text}: {detail}" if detail else text)
        if self._may_retry(cause, stale):
            self._retry(0.0 if stale else None, at_once=self.attempts == 1 and cause in _NEVER_LEFT)
        else:
            self.respond(*self.last_error)

    def _may_retry(self, cause: str, stale: bool = False) -> bool:
        d = self.decision
        if self.resp_started or self.done or d is None:
            return False
        r = d.retry
        if not stale and self.attempts >= r.attempts:
            return False
        if self.client.loop.time() >= self.total_deadline:
            return False
        if cause == "connect_failure" or cause == "certificate":  # the request never left
            return r.on_error
        if cause == "connect_timeout":
            return r.on_timeout
        if not (self.head.idempotent or r.non_idempotent):
            return False
        if self.replay is None and self.body_sent:
            return False  # the body started flowing and is longer than the replay buffer
        if cause == "timeout" or cause == "send_timeout":
            return r.on_timeout
        if cause == "status":
            return True
        return r.on_error

    def _retry(self, delay: float | None = None, at_once: bool = False) -> None:
        """`delay` None: a counted retry after the backoff (`at_once`: without it); else an
        uncounted one after `delay` (a stale pooled connection, an error page)."""
        d = self.decision
        assert d is not None
        self.phase = BACKOFF
        if self.replay is not None:
            self.pending = list(self.replay)
            self.pending_size = self.replay_size
            self.body_sent = 0
        self.req_sent = False
        self.client.resume_reading(PAUSE_UPSTREAM)
        if delay is None:
            self.server.hooks.retry(self.route)
            r = d.retry
            delay = 0.0 if at_once else random.uniform(
                0, min(r.backoff_max, r.backoff_base * (2 ** self.attempts - 1)))
        self.deadline = self.total_deadline
        if self.deadline != INF:
            self.client.arm(self.deadline)
        self.backoff = self.client.loop.call_later(delay, self._attempt)

    def _drained(self) -> None:
        """The answer being drained ended (or was cut off): the next try goes, at once when
        it is the error page of an intercepted answer (custom-http-errors, response.py)."""
        self._retry(0.0 if self.intercepted else None)

    def _set_deadline(self, when: float) -> None:
        self.deadline = when if when < self.total_deadline else self.total_deadline
        self.client.arm(self.deadline)

    def on_deadline(self, now: float) -> None:
        """Called by the client connection's timer once `now >= self.deadline`."""
        if self.done:
            return
        if now >= self.total_deadline:
            self._cancel_pending()
            self._drop_conn()
            self._end_attempt("timeout", None, "timeout")
            if self.resp_started:
                self._abort_client()
            else:
                self.respond(504, "upstream request timeout")
            return
        phase = self.phase
        d = self.decision
        assert d is not None
        if phase == CONNECTING:
            self._cancel_pending()
            self._failed("connect_timeout", "")
        elif phase == SENT:
            if not self.req_sent and self.progress != self.seen:
                self.seen = self.progress
                self._set_deadline(now + d.timeouts.send)
                return
            self._drop_conn()
            if self.req_sent or self.client.paused & PAUSE_UPSTREAM:
                self._failed("timeout" if self.req_sent else "send_timeout", "")
            else:  # the client stopped sending its body: not the upstream's fault
                self._end_attempt(None, None)
                self.respond(408, "request body timeout")
        elif phase in (STREAMING, DRAINING):
            if self.progress != self.seen:
                self.seen = self.progress
                self._set_deadline(now + d.timeouts.read)
                return
            self._drop_conn()
            if phase == DRAINING:
                self._drained()
            elif self.client.write_paused:  # the client stopped reading: not the upstream's fault
                self._end_attempt(None, None)
                self._abort_client()
            else:
                self._end_attempt("timeout", None, "timeout")
                self._abort_client()

