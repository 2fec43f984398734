"""The admin HTTP endpoints every component serves: /metrics, /healthz, /readyz.

Generic on purpose (a registry and two callables), so the controller, the DNS
server and the gateway all expose the same probe and scrape surface.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

#: Families a component writes itself (many labelled series, cheaper than samples): given
#: whether the scrape is OpenMetrics, their exposition text, appended to the registry's.
Render = Callable[[bool], str]
EOF = b"# EOF\n"

#: A probe returns a bool, or (bool, reason); it may be a coroutine function.
ProbeResult = bool | tuple[bool, str]
Probe = Callable[[], ProbeResult | Awaitable[ProbeResult]]


async def _evaluate(probe: Probe) -> tuple[bool, str]:
    """Run a probe; a probe that raises counts as failing, with the error as reason."""
    try:
        result: Any = probe()
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:  # a broken probe must fail the probe, not the server
        log.warning("probe raised", extra={"error": repr(exc)})
        return False, f"probe error: {exc}"
    if isinstance(result, tuple):
        ok, reason = bool(result[0]), str(result[1]) if len(result) > 1 else ""
        return ok, reason
    return bool(result), ""


class AdminServer:
    """aiohttp server for Prometheus scrapes and Kubernetes liveness/readiness probes."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        ready: Probe,
        healthy: Probe = lambda: True,
        routes: Iterable[web.AbstractRouteDef] = (),
        encode_aside: bool = False,
        render: Render | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        #: Encode scrapes in a worker thread, so a big exposition (the gateway's per-route
        #: histograms: 20 MB for 5000 routes) does not stall the event loop; every collector
        #: of the registry must then read its state with atomic copies (one C call each).
        self.encode_aside = encode_aside
        self.render = render
        self._ready = ready
        self._healthy = healthy
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_routes(list(routes))
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        if self._runner is not None:
            raise RuntimeError("AdminServer already started")
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addrs = runner.addresses
        self.bound_port = int(addrs[0][1]) if addrs else self.port
        log.info(
            "admin server listening",
            extra={"host": self.host, "port": self.bound_port},
        )
        return self.bound_port

    async def stop(self) -> None:
        """Close the listener and open connections; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:9090 (after start)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.bound_port}"

    async def _metrics(self, request: web.Request) -> web.Response:
        # OpenMetrics when the scraper asks for it, the classic text format otherwise.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        openmetrics = content_type.startswith("application/openmetrics-text")

        def encode() -> bytes:
            body = encoder(self.registry)
            if self.render is None:
                return body
            more = self.render(openmetrics).encode()
            if openmetrics and body.endswith(EOF):  # (the families go before the end marker)
                return body[:-len(EOF)] + more + EOF
            return body + more

        if self.encode_aside:
            body = await asyncio.get_running_loop().run_in_executor(None, encode)
        else:
            body = encode()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, reason = await _evaluate(self._healthy)
        if ok:
            return web.Response(text="ok\n")
        return web.Response(status=500, text=(reason or "unhealthy") + "\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, reason = await _evaluate(self._ready)
        if ok:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=(reason or "not ready") + "\n")
