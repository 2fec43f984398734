"""The gateway's Prometheus metrics: data path hooks plus upstream state read at scrape time."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.proxy.hooks import MirrorOutcome, ProxyHooks

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GatewayMetrics(ProxyHooks):
    """Called on every request: one labelled counter increment and one histogram observe."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "gateway_requests_total", "Client requests by route, serving cluster and final status",
            ["route", "cluster", "status"], registry=registry)
        self.latency = Histogram(
            "gateway_upstream_latency_seconds", "First upstream attempt to the end of the response",
            ["route", "cluster"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.retries = Counter("gateway_retries_total", "Extra attempts on another endpoint",
                               ["route"], registry=registry)
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total", "Failed upstream attempts by cause",
            ["route", "cluster", "cause"], registry=registry)
        self.mirrors = Counter("gateway_mirror_requests_total", "Mirror copies by outcome",
                               ["outcome"], registry=registry)
        self.connections = Gauge("gateway_active_connections", "Open client connections",
                                 registry=registry)
        self.config_reloads = Counter("gateway_config_reloads_total", "Route table rebuilds",
                                      registry=registry)
        self.config_problems = Gauge("gateway_config_problems", "Ignored Ingresses or annotations",
                                     registry=registry)
        # Children cached per label tuple: labels() costs more than the increment itself.
        self._req: dict[tuple[str, str, int], Callable[[], None]] = {}
        self._lat: dict[tuple[str, str], Callable[[float], None]] = {}

    def observe(self, route: str, cluster: str, status: int, upstream_seconds: float) -> None:
        key = (route, cluster, status)
        inc = self._req.get(key)
        if inc is None:
            inc = self._req[key] = self.requests.labels(route, cluster, str(status)).inc
        inc()
        if cluster:
            lat = self._lat.get((route, cluster))
            if lat is None:
                lat = self._lat[(route, cluster)] = self.latency.labels(route, cluster).observe
            lat(upstream_seconds)

    def retry(self, route: str) -> None:
        self.retries.labels(route).inc()

    def upstream_error(self, route: str, cluster: str, cause: str) -> None:
        self.upstream_errors.labels(route, cluster, cause).inc()

    def mirror(self, outcome: MirrorOutcome) -> None:
        self.mirrors.labels(outcome).inc()

    def connection_opened(self) -> None:
        self.connections.inc()

    def connection_closed(self) -> None:
        self.connections.dec()


class UpstreamCollector(Collector):
    """Ejections, health checks and endpoint counts, read from the upstream part at scrape."""

    def __init__(self, upstream) -> None:
        self.upstream = upstream

    def collect(self):
        counters = self.upstream.counters()
        ejections = CounterMetricFamily("gateway_ejections", "Outlier ejections", labels=["cluster"])
        for cluster, n in sorted(counters.get("ejections_total", {}).items()):
            ejections.add_metric([str(cluster)], n)
        yield ejections
        checks = CounterMetricFamily("gateway_health_checks", "Active health checks",
                                     labels=["cluster", "result"])
        for (cluster, result), n in sorted(counters.get("health_checks_total", {}).items()):
            checks.add_metric([str(cluster), str(result)], n)
        yield checks
        gauges = GaugeMetricFamily("gateway_endpoints", "Endpoints by state", labels=["state"])
        for state, n in sorted(self.upstream.gauges().items()):
            gauges.add_metric([state], n)
        yield gauges
