"""The executor's Prometheus endpoint: on 127.0.0.1, with every metric it documents."""

from __future__ import annotations

import socket
import urllib.request

from worker_runtime.executor.metrics import ExecutorMetrics


def test_metrics_are_served_on_loopback() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = ExecutorMetrics()
    metrics.bind(port)
    metrics.start()
    metrics.leases.inc()
    metrics.actions.labels(outcome="success").inc()
    metrics.worker_starts.inc()
    metrics.worker_reuses.inc(3)
    metrics.warm_hit_ratio.set(0.75)
    with metrics.execution_seconds.time():
        pass
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in (
        "executor_leases_total 1.0",
        'executor_actions_total{outcome="success"} 1.0',
        "executor_worker_starts_total 1.0",
        "executor_worker_reuses_total 3.0",
        "executor_warm_hit_ratio 0.75",
        "executor_execution_seconds_count 1.0",
        "executor_worker_evictions 0.0",
    ):
        assert line in text, line
    metrics.close()  # the port freed, its thread ended
