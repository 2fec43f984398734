"""Metrics hooks of the data path: a no-op base class the app subclasses (e.g. Prometheus).

The proxy calls these on every request, so they are plain methods with positional
arguments and no return value; keep overrides cheap (a counter increment, a histogram
observe). The proxy never catches exceptions raised here.
"""

from __future__ import annotations

from typing import Literal

MirrorOutcome = Literal["sent", "dropped", "failed"]


class ProxyHooks:
    """No-op defaults. Route "" means "no route matched"; cluster "" means "no endpoint"."""

    def observe(self, route: str, cluster: str, status: int, upstream_seconds: float) -> None:
        """One finished client request: final status (499: the client went away first)
        and the time from the first upstream attempt to the end of the response."""

    def retry(self, route: str) -> None:
        """One more attempt of a request on another endpoint."""

    def upstream_error(self, route: str, cluster: str, cause: str) -> None:
        """One failed attempt; cause: connect_failure, connect_timeout, reset, timeout,
        invalid_response, or status_<code> when a retriable status was discarded."""

    def mirror(self, outcome: MirrorOutcome) -> None:
        """A mirror copy was sent (any status), dropped (caps), or failed (error/timeout)."""

    def connection_opened(self) -> None:
        """A client connection was accepted."""

    def connection_closed(self) -> None:
        """A client connection closed."""
