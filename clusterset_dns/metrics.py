"""The DNS server's Prometheus metrics, `clusterset_dns_*`, on a per-app registry.

Per-query counting must cost next to nothing: cache hits bump an int in their cache
entry and the slow path a dict; a collector folds them into counters at scrape time.
Latency is a histogram of sampled queries (one in `server.LATENCY_SAMPLE` over UDP,
every TCP query), because timing each cached answer costs about as much as serving it.
Over batched UDP (`udp.BatchUdp`) a sampled query counts the time of its whole batch,
receive to send: what that query waited inside the server.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from clusterset_dns.responder import Responder

PREFIX = "clusterset_dns"
#: 5 us .. 100 ms: a cached answer takes microseconds, a miss tens of them.
LATENCY_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.1,
)


class _ResponderCollector(Collector):
    """Counters kept by the responder, read at scrape time."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        r = self.responder
        counts, hits = r.stats()
        queries = CounterMetricFamily(
            f"{PREFIX}_queries", "DNS messages answered, by query type, response code and transport.",
            labels=["qtype", "rcode", "transport"],
        )
        for (qtype, rcode, transport), n in sorted(counts.items()):
            queries.add_metric([qtype, rcode, transport], n)
        yield queries
        yield CounterMetricFamily(
            f"{PREFIX}_cache_hits", "Queries answered from the pre-rendered answer cache.", value=hits
        )
        yield CounterMetricFamily(
            f"{PREFIX}_cache_misses", "Queries that had to be resolved and rendered.", value=r.misses
        )
        yield CounterMetricFamily(
            f"{PREFIX}_cache_invalidations", "Cached answers dropped because the catalog changed.",
            value=r.invalidations,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_cache_entries", "Pre-rendered answers held.", value=r.entries
        )


class DnsMetrics:
    """Every metric of one DNS server instance."""

    def __init__(self, registry: CollectorRegistry, responder: Responder) -> None:
        self.registry = registry
        registry.register(_ResponderCollector(responder))
        self.latency = Histogram(
            f"{PREFIX}_query_duration_seconds",
            "Time to answer one query inside the server (sampled: 1 in 64 over UDP, where "
            "a batch of queries answered together counts as one time).",
            ["transport"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.udp_latency = self.latency.labels(transport="udp")
        self.tcp_latency = self.latency.labels(transport="tcp")
        self.catalog_services = Gauge(
            f"{PREFIX}_catalog_services", "ServiceImports in the catalog.", registry=registry
        )
        self.catalog_endpoints = Gauge(
            f"{PREFIX}_catalog_endpoints", "Ready endpoint addresses of Headless imports.",
            registry=registry,
        )
        self.synced = Gauge(
            f"{PREFIX}_synced", "1 once the catalog's first full sync is done.", registry=registry
        )
        self.serial = Gauge(
            f"{PREFIX}_soa_serial", "The zone's SOA serial (unix time of the last change).",
            registry=registry,
        )
        self.tcp_connections = Gauge(
            f"{PREFIX}_tcp_connections", "Open TCP connections.", registry=registry
        )
        self.internal_errors = Gauge(
            f"{PREFIX}_internal_errors", "Queries that hit a bug (answered SERVFAIL).",
            registry=registry,
        )
