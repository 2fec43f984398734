"""Metrics hooks of the data path: the `Hooks` protocol and `ProxyHooks`, its no-op version.

The proxy calls these on every request, so they are plain methods with positional
arguments and no return value; keep implementations cheap (a counter increment, a
histogram observe). The proxy never catches exceptions raised here. An implementation
need not subclass ProxyHooks (gateway/metrics.py does not: it is compiled with the data
path, so the per-request call stays in native code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from gateway.proxy.exchange_base import ExchangeBase
    from gateway.proxy.heads import Peer

MirrorOutcome = Literal["sent", "dropped", "failed"]


class RequestLog(Protocol):
    """The access log (gateway/access_log.py), called when a request ends."""

    def request(self, ex: ExchangeBase, status: int, now: float) -> None: ...
    def rejected(self, peer: Peer, status: int) -> None: ...


class Hooks(Protocol):
    def observe(self, route: str, cluster: str, status: int, upstream_seconds: float) -> None: ...
    def retry(self, route: str) -> None: ...
    def upstream_error(self, route: str, cluster: str, cause: str) -> None: ...
    def mirror(self, outcome: MirrorOutcome, copies: int = 1) -> None: ...
    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...


class ProxyHooks:
    """No-op defaults. Route "" means "no route matched"; cluster "" means "no endpoint"."""

    def observe(self, route: str, cluster: str, status: int, upstream_seconds: float) -> None:
        """One finished client request: final status (499: the client went away first)
        and the time from the first upstream attempt to the end of the response."""

    def retry(self, route: str) -> None:
        """One more attempt of a request on another endpoint."""

    def upstream_error(self, route: str, cluster: str, cause: str) -> None:
        """One failed attempt; cause: connect_failure, certificate (proxy-ssl-verify refused the
        pod's), connect_timeout, reset, timeout,
        invalid_response, or status_<code> when a retriable status was discarded."""

    def mirror(self, outcome: MirrorOutcome, copies: int = 1) -> None:
        """`copies` mirror copies were sent (any status), dropped (caps), or failed (error/timeout)."""

    def connection_opened(self) -> None:
        """A client connection was accepted."""

    def connection_closed(self) -> None:
        """A client connection closed."""
