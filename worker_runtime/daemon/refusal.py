"""A front whose attach failed after Buck2 had already connected to its socket.

The ``worker-runtime`` command listens on ``WORKER_SOCKET`` before the daemon has seen the config
(daemon/handover.py). If the attach then fails (the daemon refuses the config, or cannot
be started), a connection Buck2 made meanwhile must not be reset: Buck2 would report
only "Worker failed to spawn: transport error". Buck2 no longer reaches the path (the
front removes it first, so a later connect fails and Buck2 sees the worker's exit with
its stderr); the connections already made are answered here, every request with the
reason, until the end of the command (SIGTERM), as any worker's failing action is.
"""

from __future__ import annotations

import _socket
import asyncio
import os
import signal
import socket
from pathlib import Path

from worker_runtime.backends.manager import BackendManager
from worker_runtime.buck2.h2_server import H2SocketServer
from worker_runtime.buck2.requests import RequestHandler
from worker_runtime.config import RuntimeConfig
from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE
from worker_runtime.execution.outcome import Failure, FailureKind, Outcome, WorkRequest
from worker_runtime.proto import buck2_worker_pb2 as pb


class _Refuse:
    """The executor of a refused front: every request fails with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def run(self, request: WorkRequest) -> Outcome:
        return Failure(FailureKind.BAD_REQUEST, self.reason)


class _RefusingHandler(RequestHandler):
    def error(self, message: str, **extra: int) -> pb.ExecuteResponse:
        # No runtime log to point to: no daemon serves this socket.
        return pb.ExecuteResponse(
            exit_code=RUNTIME_ERROR_EXIT_CODE, stderr=f"worker-runtime: error: {message}\n", **extra
        )


def serve_refusal(early: _socket.socket, reason: str, received: list[int]) -> None:
    """Answers every request on ``early``'s connections with ``reason`` until SIGTERM or
    SIGINT (its path already removed: only connections made before are served).
    ``received`` lists the stop signals the front's own handlers caught so far."""
    listener = socket.socket(fileno=early.detach())  # the event loop takes socket's sockets

    async def serve() -> None:
        # A manager that never starts a backend: the handler only needs its settings.
        manager = BackendManager(RuntimeConfig(command=("worker-runtime",)), os.getcwd(), Path())
        handler = _RefusingHandler(manager, Path(), _Refuse(reason))
        listener.setblocking(False)
        server = H2SocketServer(handler, "", listener)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if received:  # the end of the command came before the handlers above
            stop.set()
        await server.start()
        await stop.wait()
        await server.drain_and_stop(1.0)

    try:
        asyncio.run(serve())
    finally:
        listener.close()  # early's descriptor is this socket's now: the caller's close is empty
