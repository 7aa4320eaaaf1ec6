"""The executor's Prometheus metrics (served on 127.0.0.1 with --metrics-port): leases,
actions by outcome, persistent worker starts, reuses and evictions, the warm-hit ratio,
queue latency at this executor (a lease waiting for one of its --capacity slots), and
execution latency. (The scheduler's own queue is the server's to measure: a lease says
nothing of when its job was queued.)"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class ExecutorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.leases = Counter("executor_leases", "Leases taken", registry=r)
        self.actions = Counter(
            "executor_actions", "Actions finished, by outcome", ["outcome"], registry=r
        )
        self.worker_starts = Counter(
            "executor_worker_starts", "Persistent workers started", registry=r
        )
        self.worker_reuses = Counter(
            "executor_worker_reuses", "Actions on a warm worker", registry=r
        )
        self.worker_evictions = Gauge(
            "executor_worker_evictions", "Workers stopped by the idle time or the caps", registry=r
        )
        self.warm_hit_ratio = Gauge(
            "executor_warm_hit_ratio",
            "Persistent-worker actions that found a warm worker",
            registry=r,
        )
        self.queue_seconds = Histogram(
            "executor_queue_seconds", "From a lease's arrival here to its action's start",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.execution_seconds = Histogram(
            "executor_execution_seconds", "Running one action, upload included",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

    def serve(self, port: int) -> None:
        start_http_server(port, addr="127.0.0.1", registry=self.registry)
