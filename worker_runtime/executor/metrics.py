"""The executor's Prometheus metrics (served on 127.0.0.1 with --metrics-port): leases,
actions by outcome, persistent worker starts, reuses and evictions, the warm-hit ratio,
queue latency at this executor (a lease waiting for one of its --capacity slots), and
execution latency. (The scheduler's own queue is the server's to measure: a lease says
nothing of when its job was queued.)"""

from __future__ import annotations

import errno
import os
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app


class MetricsPortUnavailable(RuntimeError):
    """--metrics-port cannot be listened on (taken by another process, or not allowed)."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape is not worth a line of the executor's log


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

        self._server: _Server | None = None
        self._serving = False

    def bind(self, port: int) -> None:
        """Listens on 127.0.0.1:``port``, answering nothing until ``start``: the executor
        binds it before it registers (a port in use then fails it before it holds any
        lease), and answers once registered (`cluster up` waits for the answer).
        MetricsPortUnavailable, naming the port, if it cannot."""
        try:
            self._server = make_server(
                "127.0.0.1", port, make_wsgi_app(self.registry), _Server, _QuietHandler
            )
        except OSError as exc:
            raise MetricsPortUnavailable(
                f"cannot serve metrics on 127.0.0.1:{port} (--metrics-port): "
                f"{os.strerror(exc.errno or errno.EIO)}; choose a free port"
            ) from None

    def start(self) -> None:
        """Answers on the port ``bind`` took (nothing if none)."""
        if self._server is not None and not self._serving:
            self._serving = True
            threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()

    def close(self) -> None:
        """Stops answering and frees the port."""
        server, self._server = self._server, None
        if server is not None:
            if self._serving:  # (shutdown waits for serve_forever: never if not started)
                server.shutdown()
            server.server_close()
