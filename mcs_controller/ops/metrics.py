"""The controller's Prometheus metrics, on a registry owned by one component instance.

A registry per instance (not prometheus_client's global one) lets tests and the
all-in-one process hold several controllers without duplicate-registration errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

PREFIX = "mcs_controller"

#: 1 ms .. 10 s: a mirrored write normally lands in milliseconds; seconds means trouble.
PROPAGATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
#: One reconcile: a handful of cached reads and maybe a few writes.
RECONCILE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

WRITE_VERBS = ("create", "update", "patch", "delete")


def new_registry(process: bool = True) -> CollectorRegistry:
    """A fresh registry, with the usual process_*/python_* metrics unless `process=False`."""
    reg = CollectorRegistry(auto_describe=True)
    if process:
        ProcessCollector(registry=reg)
        # Platform and GC collectors are stateless: register the shared instances.
        reg.register(PLATFORM_COLLECTOR)
        reg.register(GC_COLLECTOR)
    return reg


class ControllerMetrics:
    """Every metric the controller exports, named `mcs_controller_*`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        reg = self.registry
        self.reconciles_total = Counter(
            f"{PREFIX}_reconciles_total",
            "Reconciles finished, by result (success, error, requeue).",
            ["result"],
            registry=reg,
        )
        self.reconcile_errors_total = Counter(
            f"{PREFIX}_reconcile_errors_total",
            "Reconciles that raised an error (they are retried with backoff).",
            registry=reg,
        )
        self.reconcile_duration_seconds = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Time spent in one reconcile.",
            buckets=RECONCILE_BUCKETS,
            registry=reg,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Keys waiting in the work queue.",
            registry=reg,
        )
        self.writes_total = Counter(
            f"{PREFIX}_writes_total",
            "API writes made by the controller, by cluster, kind and verb.",
            ["cluster", "kind", "verb"],
            registry=reg,
        )
        self.propagation_latency_seconds = Histogram(
            f"{PREFIX}_propagation_latency_seconds",
            "From a source EndpointSlice change seen to its mirrored write done.",
            buckets=PROPAGATION_BUCKETS,
            registry=reg,
        )
        self.cluster_reachable = Gauge(
            f"{PREFIX}_cluster_reachable",
            "1 when the cluster's API answered the last call, else 0.",
            ["cluster"],
            registry=reg,
        )
        self.is_leader = Gauge(
            f"{PREFIX}_is_leader",
            "1 while this replica holds the leader Lease.",
            registry=reg,
        )
        self.informer_synced = Gauge(
            f"{PREFIX}_informer_synced",
            "1 once the informer for (cluster, resource) has listed and is watching.",
            ["cluster", "resource"],
            registry=reg,
        )

    # Small helpers so call sites stay one line.

    def observe_reconcile(self, result: str, seconds: float) -> None:
        """Count one reconcile and its duration; result 'error' also counts an error."""
        self.reconciles_total.labels(result=result).inc()
        self.reconcile_duration_seconds.observe(seconds)
        if result == "error":
            self.reconcile_errors_total.inc()

    @contextmanager
    def time_reconcile(self) -> Iterator[None]:
        """Time a reconcile; an exception counts as result 'error' and propagates."""
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.observe_reconcile("error", time.perf_counter() - start)
            raise
        self.observe_reconcile("success", time.perf_counter() - start)

    def count_write(self, cluster: str, kind: str, verb: str) -> None:
        """Count one API write; verb is one of create, update, patch, delete."""
        if verb not in WRITE_VERBS:
            raise ValueError(f"unknown write verb {verb!r}; use one of {WRITE_VERBS}")
        self.writes_total.labels(cluster=cluster, kind=kind, verb=verb).inc()

    def observe_propagation(self, seen_at: float, done_at: float | None = None) -> None:
        """Latency from `seen_at` (a time.monotonic() stamp) to now or `done_at`."""
        end = time.monotonic() if done_at is None else done_at
        self.propagation_latency_seconds.observe(max(0.0, end - seen_at))

    def set_cluster_reachable(self, cluster: str, reachable: bool) -> None:
        self.cluster_reachable.labels(cluster=cluster).set(1 if reachable else 0)

    def set_informer_synced(self, cluster: str, resource: str, synced: bool) -> None:
        self.informer_synced.labels(cluster=cluster, resource=resource).set(1 if synced else 0)

    def set_leader(self, leading: bool) -> None:
        self.is_leader.set(1 if leading else 0)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (what /metrics serves)."""
        return generate_latest(self.registry)
