"""The gRPC servicers Buck2 talks to on WORKER_SOCKET, and the serve loop around them.

Thin by design: each RPC hands its ExecuteCommand to ``RequestHandler`` and writes
back what it answers. ``socket_server`` picks this server or ``h2_server``'s (the
``server`` setting); ``serve`` owns start-up, SIGTERM draining and clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from worker_runtime.backends.manager import BackendManager
from worker_runtime.buck2 import grpc_tuning
from worker_runtime.buck2.requests import (
    CANCELLED_BY_CLIENT,
    EXEC_WITHOUT_COMMAND,
    RequestHandler,
    unreadable_stream_message,
)
from worker_runtime.config import RuntimeConfig
from worker_runtime.errors import ConfigError
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.proto import buck2_worker_pb2_grpc as pb_grpc
from worker_runtime.socket_paths import check_socket_path

LOGGER = logging.getLogger(__name__)

GRPC_OPTIONS = [
    # Buck2's own limit is unlimited; responses of many MiB (huge diagnostics) must pass.
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


class WorkerServicer(pb_grpc.WorkerServicer):
    """``Execute`` (unary, what Buck2 calls by default) and ``Exec`` (cancellable)."""

    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler

    async def Execute(
        self, request: pb.ExecuteCommand, context: grpc.aio.ServicerContext
    ) -> pb.ExecuteResponse:
        return await self.handler.execute_to_completion(request)

    async def Exec(
        self, request_iterator: AsyncIterator[pb.ExecuteEvent], context: grpc.aio.ServicerContext
    ) -> pb.ExecuteResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("data") != "command":
            return self.handler.error(EXEC_WITHOUT_COMMAND)
        work = asyncio.create_task(self.handler.execute(first.command))
        self.handler.track(work)
        cancelled = False

        async def watch_for_cancel() -> None:
            nonlocal cancelled
            async for event in request_iterator:
                if event.WhichOneof("data") == "cancel":
                    cancelled = True
                    work.cancel()
                    return

        watcher = asyncio.create_task(watch_for_cancel())
        try:
            return await work
        except asyncio.CancelledError:
            if cancelled:
                return self.handler.error(CANCELLED_BY_CLIENT)
            current = asyncio.current_task()
            if self.handler.abort_reason and not (current and current.cancelling()):
                return self.handler.error(self.handler.abort_reason)
            raise
        finally:
            watcher.cancel()


class StreamingServicer(pb_grpc.WorkerStreamingServicer):
    """``ExecuteStream``: many requests on one stream, answered by id in any order."""

    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler

    async def ExecuteStream(
        self,
        request_iterator: AsyncIterator[pb.ExecuteCommandStream],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ExecuteResponseStream]:
        # Buck2 awaits the response headers before it sends its first request: send them now.
        await context.send_initial_metadata(())
        answers: asyncio.Queue[pb.ExecuteResponseStream | None] = asyncio.Queue()
        # One task per request (the handler's own, which runs to its end even if the
        # stream is dropped); it puts its answer on the queue as it ends.
        unanswered = 0
        reading_done = False

        def answered(request_id: int, response: pb.ExecuteResponse) -> None:
            nonlocal unanswered
            unanswered -= 1
            answers.put_nowait(pb.ExecuteResponseStream(response=response, id=request_id))
            if reading_done and not unanswered:
                answers.put_nowait(None)

        #: Why the stream cannot be read on: its requests so far are answered, then it ends
        #: with INVALID_ARGUMENT saying so (grpcio would end it with OK).
        unreadable: list[str] = []

        async def read_requests() -> None:
            nonlocal reading_done, unanswered
            try:
                async for message in request_iterator:
                    if not isinstance(message, pb.ExecuteCommandStream):
                        raise DecodeError("grpcio could not decode it")
                    unanswered += 1
                    self.handler.start(message.request, functools.partial(answered, message.id))
            except DecodeError as exc:
                unreadable.append(
                    unreadable_stream_message(
                        f"a message on the stream is not an ExecuteCommandStream ({exc})"
                    )
                )
            except Exception as exc:  # grpcio's reading of the stream failed otherwise
                LOGGER.warning("reading an ExecuteStream failed: %r", exc)
                unreadable.append(f"the stream could not be read on: {exc!r}")
            finally:
                reading_done = True
                if not unanswered:
                    answers.put_nowait(None)

        reader = asyncio.create_task(read_requests())
        try:
            while (item := await answers.get()) is not None:
                yield item
        finally:
            reader.cancel()
        if unreadable:
            LOGGER.info("ending an ExecuteStream: %s", unreadable[0])
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, unreadable[0])


class Buck2SocketServer:
    """Serves Buck2's worker protocol on one socket path with one request handler."""

    def __init__(self, handler: RequestHandler, socket_path: str) -> None:
        self.handler = handler
        self.socket_path = socket_path
        self._server = grpc.aio.server(options=GRPC_OPTIONS)
        pb_grpc.add_WorkerServicer_to_server(WorkerServicer(handler), self._server)
        pb_grpc.add_WorkerStreamingServicer_to_server(StreamingServicer(handler), self._server)

    async def start(self) -> None:
        check_socket_path(self.socket_path)
        # Only our own user may connect: a Unix socket needs write permission to connect.
        old_umask = os.umask(0o177)
        try:
            self._server.add_insecure_port(f"unix:{self.socket_path}")
        finally:
            os.umask(old_umask)
        await self._server.start()

    async def drain_and_stop(self, grace_s: float, keep_path: bool = False) -> None:
        """Refuses new requests, lets in-flight ones finish for ``grace_s``, then stops and
        removes the socket's path (with ``keep_path``, leaves it)."""
        await self.handler.drain(self.socket_path, grace_s)
        # The server gets a moment to send the answers of the requests drain cancelled.
        await self._server.stop(1.0)
        if not keep_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)


class SocketServer(Protocol):
    """What serves one worker socket: ``Buck2SocketServer`` or ``h2_server.H2SocketServer``."""

    handler: RequestHandler
    socket_path: str

    async def start(self) -> None: ...

    async def drain_and_stop(self, grace_s: float, keep_path: bool = False) -> None: ...


def socket_server(
    handler: RequestHandler, socket_path: str, listener: socket.socket | None = None
) -> SocketServer:
    """The server the handler's config asks for (its ``server`` setting), on ``listener``
    if given (a socket already listening on ``socket_path``: only the h2 server can take
    one; grpcio binds its sockets itself)."""
    if handler.config.server == "h2":
        from worker_runtime.buck2.h2_server import H2SocketServer

        return H2SocketServer(handler, socket_path, listener)
    if listener is not None:
        raise ConfigError(
            f'server "{handler.config.server}" cannot serve a socket the front listens on; '
            'only server "h2" can'
        )
    return Buck2SocketServer(handler, socket_path)


async def serve(config: RuntimeConfig, socket_path: str, log_dir: Path) -> int:
    """Serves Buck2 on ``socket_path`` in this process (``--no-daemon``) until SIGTERM/SIGINT,
    then drains and cleans up."""
    manager = BackendManager(config, os.getcwd(), log_dir)
    server = socket_server(RequestHandler(manager, log_dir), socket_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    LOGGER.info("serving %s for %s (pid %d)", socket_path, list(config.command), os.getpid())
    print(f"worker-runtime: serving {socket_path}; logs in {log_dir}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
        await server.drain_and_stop(config.shutdown_grace_s)
    finally:
        await manager.stop_all()
        LOGGER.info("stopped")
    return 0


def run_server(config: RuntimeConfig, socket_path: str, log_dir: Path) -> int:
    """Runs ``serve`` on the fastest event loop available (uvloop where installed)."""
    return grpc_tuning.run(serve(config, socket_path, log_dir))
