"""Buck2's worker protocol served over HTTP/2 straight from the event loop, without grpcio
(the ``server = "h2"`` setting): gRPC's calls on ``http2.py``'s connections.

grpcio's asyncio server reads and writes the socket on its own poller thread and hands
every message to the event loop and back: on a small VM those wake-ups are most of a
request's cost. Here the socket is the event loop's own, so a request is decoded, handed
to ``RequestHandler`` and answered without leaving the loop's thread.

The same three RPCs as ``server.py``, with the same behaviour: ``Execute`` (its request
runs on when the caller goes away), ``Exec`` (a cancel event, or the caller going away,
cancels it) and ``ExecuteStream`` (response headers at once; answers by id in any order;
an undecodable message ends the stream with INVALID_ARGUMENT after the earlier requests
are answered). Messages are uncompressed and of any size; answers larger than the
client's flow-control window wait for its WINDOW_UPDATEs. Deadlines sent as
``grpc-timeout`` are not enforced: Buck2 gives a request's timeout in the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import struct
from collections.abc import Callable

from google.protobuf.message import DecodeError

from worker_runtime.buck2.http2 import Http2Connection, literal_header
from worker_runtime.buck2.requests import (
    CANCELLED_BY_CLIENT,
    EXEC_WITHOUT_COMMAND,
    RequestHandler,
    unreadable_stream_message,
)
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.socket_paths import bind_private, check_socket_path

LOGGER = logging.getLogger(__name__)

EXECUTE = b"/worker.Worker/Execute"
EXEC = b"/worker.Worker/Exec"
EXECUTE_STREAM = b"/worker.WorkerStreaming/ExecuteStream"

# gRPC status codes used here.
OK = 0
INVALID_ARGUMENT = 3
UNIMPLEMENTED = 12
INTERNAL = 13

#: The gRPC message prefix: a compressed flag and a big-endian length.
PREFIX = struct.Struct(">BI")

#: The answer's headers, as an HPACK block: ``:status: 200`` (static table entry 8), then
#: ``content-type: application/grpc``.
RESPONSE_HEADERS = b"\x88" + literal_header(b"content-type", b"application/grpc")
OK_TRAILERS = literal_header(b"grpc-status", b"0")


def trailers(status: int, message: str) -> bytes:
    """The block that ends a call with ``status`` and ``message``."""
    if status == OK:
        return OK_TRAILERS
    return literal_header(b"grpc-status", str(status).encode()) + literal_header(
        b"grpc-message", grpc_message(message)
    )


def grpc_message(text: str) -> bytes:
    """``text`` percent-encoded as the ``grpc-message`` trailer requires."""
    out = bytearray()
    for byte in text.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def framed(message: bytes) -> bytes:
    return PREFIX.pack(0, len(message)) + message


class H2SocketServer:
    """Serves Buck2's worker protocol on one socket path with one request handler."""

    def __init__(
        self, handler: RequestHandler, socket_path: str, listener: socket.socket | None = None
    ) -> None:
        self.handler = handler
        self.socket_path = socket_path
        #: A socket already listening on ``socket_path`` (the front's: daemon/handover.py).
        self._listener = listener
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._listener is not None:
            self._server = await loop.create_unix_server(
                lambda: Connection(self.handler, self._connections), sock=self._listener
            )
            return
        check_socket_path(self.socket_path)
        # Only our own user may connect. Bound here, not by an awaited create_unix_server:
        # on asyncio's own loop other tasks (a backend starting) ran under its umask.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bind_private(listener, self.socket_path)
        except BaseException:
            listener.close()
            raise
        self._server = await loop.create_unix_server(
            lambda: Connection(self.handler, self._connections), sock=listener
        )

    async def drain_and_stop(self, grace_s: float, keep_path: bool = False) -> None:
        """Refuses new requests, lets in-flight ones finish for ``grace_s``, cancels the
        rest with a clear answer, then closes every connection once its answers are sent
        (at most 1 s more) and removes the socket's path (with ``keep_path``, leaves it:
        a listener the front passed, which it offers to another daemon)."""
        await self.handler.drain(self.socket_path, grace_s)
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.go_away()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.gather(*(c.all_sent() for c in connections))
        for connection in connections:
            connection.close()
        if not keep_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)


class Connection(Http2Connection):
    """One client connection: its streams' calls, dispatched by path."""

    def __init__(self, handler: RequestHandler, registry: set[Connection]) -> None:
        super().__init__()
        self.handler = handler
        self.registry = registry
        self.calls: dict[int, Call] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # resets every open stream
        self.registry.discard(self)

    def stream_started(self, stream_id: int, path: bytes) -> None:
        kind = _CALLS.get(path)
        if kind is None:
            message = unknown_method_message(path)
            LOGGER.info("refusing a call: %s", message)
            self.send(stream_id, None, b"", RESPONSE_HEADERS + trailers(UNIMPLEMENTED, message))
            return
        self.calls[stream_id] = kind(self, stream_id)

    def stream_data(self, stream_id: int, data: bytes) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            call.feed(data)

    def stream_ended(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            call.end_of_stream()

    def stream_reset(self, stream_id: int) -> None:
        call = self.calls.pop(stream_id, None)
        if call is not None:
            call.gone()

    def finished(self, call: Call) -> None:
        self.calls.pop(call.stream_id, None)


class Call:
    """One RPC on one HTTP/2 stream: messages in, one or more answers out."""

    def __init__(self, connection: Connection, stream_id: int) -> None:
        self.connection = connection
        self.handler = connection.handler
        self.stream_id = stream_id
        self._buffer = bytearray()
        self._headers_sent = False
        self.open = True
        #: Set once a message cannot be read: no more are taken from this stream.
        self._unreadable = False

    def feed(self, data: bytes) -> None:
        """Takes a DATA frame's bytes and hands every whole message to ``on_message``."""
        if self._unreadable:
            return
        buffer = self._buffer
        if not buffer and len(data) >= PREFIX.size:
            # The usual case: a frame holding exactly one message, taken without copying.
            compressed, length = PREFIX.unpack_from(data)
            if len(data) == PREFIX.size + length and not compressed:
                self.on_message(data[PREFIX.size :])
                return
        buffer += data
        start = 0
        while not self._unreadable and len(buffer) - start >= PREFIX.size:
            compressed, length = PREFIX.unpack_from(buffer, start)
            end = start + PREFIX.size + length
            if len(buffer) < end:
                break
            message = bytes(buffer[start + PREFIX.size : end])
            start = end
            if compressed:
                self.unreadable(UNIMPLEMENTED, "compressed messages are not supported")
            else:
                self.on_message(message)
        del buffer[:start]

    def on_message(self, message: bytes) -> None:
        raise NotImplementedError

    def unreadable(self, status: int, reason: str) -> None:
        """A message could not be read: none after it is, and the call ends with ``status``."""
        self._unreadable = True
        self.fail(status, reason)

    def end_of_stream(self) -> None:
        """The client's last frame came. A message it began and did not finish is not
        dropped in silence: the call ends with INTERNAL (on a stream, once the messages
        before it are answered)."""
        if self._buffer and not self._unreadable:
            self.unreadable(
                INTERNAL,
                f"the request stream ended {len(self._buffer)} bytes into a message it did "
                "not finish",
            )
        self.end_of_requests()

    def end_of_requests(self) -> None:
        """The client sent its last message."""

    def gone(self) -> None:
        """The client reset the stream or the connection closed: nothing more is sent."""
        self.open = False

    # Answers

    def _send(self, data: bytes, end: bytes | None = None) -> None:
        """Sends ``data`` (the answer's headers first, once), and ends the call with the
        trailers block ``end`` if given."""
        if not self.open:
            return
        headers = None if self._headers_sent else RESPONSE_HEADERS
        self._headers_sent = True
        if end is not None:
            self.open = False
            self.connection.finished(self)
        self.connection.send(self.stream_id, headers, data, end)

    def send_headers(self) -> None:
        if not self._headers_sent:
            self._send(b"")

    def send(self, message: bytes) -> None:
        self._send(framed(message))

    def answer(self, response: pb.ExecuteResponse) -> None:
        """Ends the call with its one answer, in one write to the socket."""
        self._send(framed(response.SerializeToString()), OK_TRAILERS)

    def finish(self, status: int = OK, message: str = "") -> None:
        """Ends the call with ``status`` (after every message sent before)."""
        self._send(b"", trailers(status, message))

    def fail(self, status: int, message: str) -> None:
        LOGGER.info("ending a call with status %d: %s", status, message)
        self.finish(status, message)


class UnaryCall(Call):
    """``Execute``: one command, one answer; the request runs on if the caller goes."""

    def __init__(self, connection: Connection, stream_id: int) -> None:
        super().__init__(connection, stream_id)
        self._started = False

    def on_message(self, message: bytes) -> None:
        if self._started:
            self.unreadable(INTERNAL, "Execute takes one request message; this call sent more")
            return
        try:
            command = pb.ExecuteCommand.FromString(message)
        except DecodeError as exc:
            self.unreadable(INVALID_ARGUMENT, f"the request is not an ExecuteCommand ({exc})")
            return
        self._started = True
        self.handler.start(command, self.answer)

    def end_of_requests(self) -> None:
        if not self._started and not self._unreadable:
            self.fail(INTERNAL, "the call ended without its ExecuteCommand")

    def gone(self) -> None:
        if self.open and self._started:
            LOGGER.info("client went away; the request runs on to completion")
        super().gone()


class ExecCall(Call):
    """``Exec``: a command event, then perhaps a cancel event; cancelled if the caller
    goes away."""

    def __init__(self, connection: Connection, stream_id: int) -> None:
        super().__init__(connection, stream_id)
        self._work: asyncio.Task[pb.ExecuteResponse] | None = None
        self._cancelled_by_client = False

    def on_message(self, message: bytes) -> None:
        try:
            event = pb.ExecuteEvent.FromString(message)
        except DecodeError as exc:
            self.unreadable(INVALID_ARGUMENT, f"a message is not an ExecuteEvent ({exc})")
            return
        kind = event.WhichOneof("data")
        if self._work is None:
            if kind != "command":
                self._unreadable = True
                self.answer(self.handler.error(EXEC_WITHOUT_COMMAND))
                return
            self._work = asyncio.get_running_loop().create_task(self.handler.execute(event.command))
            self.handler.track(self._work)
            self._work.add_done_callback(self._done)
        elif kind == "cancel":
            self._cancelled_by_client = True
            self._work.cancel()

    def unreadable(self, status: int, reason: str) -> None:
        if self._work is not None:
            self._work.cancel()
        super().unreadable(status, reason)

    def end_of_requests(self) -> None:
        if self._work is None and not self._unreadable:
            self.answer(self.handler.error(EXEC_WITHOUT_COMMAND))

    def _done(self, work: asyncio.Task[pb.ExecuteResponse]) -> None:
        if not work.cancelled():
            self.answer(work.result())
        elif self._cancelled_by_client:
            self.answer(self.handler.error(CANCELLED_BY_CLIENT))
        elif self.handler.abort_reason:
            self.answer(self.handler.error(self.handler.abort_reason))

    def gone(self) -> None:
        super().gone()
        if self._work is not None:
            self._work.cancel()


class StreamCall(Call):
    """``ExecuteStream``: many commands, answered by id in any order as each ends; the
    requests run on if the caller goes."""

    def __init__(self, connection: Connection, stream_id: int) -> None:
        super().__init__(connection, stream_id)
        self._unanswered = 0
        self._reading_done = False
        #: Why the stream cannot be read on, with the status it then ends with.
        self._why_unreadable: tuple[int, str] | None = None
        # Buck2 awaits the response headers before it sends its first request.
        self.send_headers()

    def on_message(self, message: bytes) -> None:
        try:
            item = pb.ExecuteCommandStream.FromString(message)
        except DecodeError as exc:
            self.unreadable(
                INVALID_ARGUMENT, f"a message on the stream is not an ExecuteCommandStream ({exc})"
            )
            return
        self._unanswered += 1
        self.handler.start(item.request, functools.partial(self._answered, item.id))

    def _answered(self, request_id: int, response: pb.ExecuteResponse) -> None:
        self._unanswered -= 1
        self.send(pb.ExecuteResponseStream(response=response, id=request_id).SerializeToString())
        self._end_if_done()

    def unreadable(self, status: int, reason: str) -> None:
        """The requests before it are answered, then the stream ends with ``status``."""
        self._unreadable = True
        self._why_unreadable = (status, unreadable_stream_message(reason))
        self.end_of_requests()

    def end_of_requests(self) -> None:
        if self._reading_done:  # an unreadable message ended the reading already
            return
        self._reading_done = True
        self._end_if_done()

    def _end_if_done(self) -> None:
        if self._reading_done and not self._unanswered:
            if self._why_unreadable is not None:
                self.fail(*self._why_unreadable)
            else:
                self.finish()


_CALLS: dict[bytes, Callable[[Connection, int], Call]] = {
    EXECUTE: UnaryCall,
    EXEC: ExecCall,
    EXECUTE_STREAM: StreamCall,
}


#: The most of an unknown method's path its error message repeats: the answer's header
#: block then fits in one frame of the smallest size a client may take (16 KiB).
MAX_ECHOED_PATH = 200


def unknown_method_message(path: bytes) -> str:
    shown = path[:MAX_ECHOED_PATH].decode(errors="replace")
    return f"unknown method {shown}" + ("..." if len(path) > MAX_ECHOED_PATH else "")
