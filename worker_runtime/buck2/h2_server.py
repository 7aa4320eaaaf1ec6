"""Buck2's worker protocol served over HTTP/2 straight from the event loop, with the
``h2`` package's protocol state machine and no grpcio (the ``server = "h2"`` setting).

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
import struct
from collections.abc import Callable
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from google.protobuf.message import DecodeError

from worker_runtime.buck2.requests import RequestHandler
from worker_runtime.buck2.sockets import check_socket_path
from worker_runtime.proto import buck2_worker_pb2 as pb

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

_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    # The answers' headers are this module's own constants, and of a request's headers only
    # :path is read (looked up as it is): checking them costs a tenth of a request's time.
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)
#: The request headers we answer with: nothing but what gRPC requires.
_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
_OK_TRAILERS = ((b"grpc-status", b"0"),)


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

    def __init__(self, handler: RequestHandler, socket_path: str) -> None:
        self.handler = handler
        self.socket_path = socket_path
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()

    async def start(self) -> None:
        check_socket_path(self.socket_path)
        # Only our own user may connect: a Unix socket needs write permission to connect.
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: Connection(self.handler, self._connections), self.socket_path
            )
        finally:
            os.umask(old_umask)

    async def drain_and_stop(self, grace_s: float) -> None:
        """Refuses new requests, lets in-flight ones finish for ``grace_s``, cancels the
        rest with a clear answer, then closes every connection once its answers are sent
        (at most 1 s more)."""
        await self.handler.drain(self.socket_path, grace_s)
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.go_away()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.gather(*(c.flushed() for c in connections))
        for connection in connections:
            connection.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)


class Connection(asyncio.Protocol):
    """One client connection: HTTP/2 frames in, calls dispatched by path, answers out."""

    def __init__(self, handler: RequestHandler, registry: set[Connection]) -> None:
        self.handler = handler
        self.registry = registry
        self.h2 = h2.connection.H2Connection(_CONFIG)
        self.calls: dict[int, Call] = {}
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._idle: asyncio.Event | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        self.registry.add(self)
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            LOGGER.warning("closing a connection that broke HTTP/2: %s", exc)
            self.flush()  # the GOAWAY h2 queued
            self.close()
            return
        for event in events:
            self._on_event(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.registry.discard(self)
        calls = list(self.calls.values())
        self.calls.clear()
        for call in calls:
            call.gone()
        if self._idle is not None:
            self._idle.set()

    # HTTP/2 events

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            with contextlib.suppress(h2.exceptions.ProtocolError):  # a stream already closed
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.feed(event.data)
        elif isinstance(event, h2.events.RequestReceived):
            self._start_call(event.stream_id, dict(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.end_of_requests()
        elif isinstance(event, h2.events.StreamReset):
            call = self.calls.pop(event.stream_id, None)
            if call is not None:
                call.gone()
        elif isinstance(event, h2.events.WindowUpdated):
            for call in list(self.calls.values()):
                if event.stream_id in (0, call.stream_id):
                    call.pump()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for call in list(self.calls.values()):
                call.pump()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def _start_call(self, stream_id: int, headers: dict[bytes, bytes]) -> None:
        path = headers.get(b":path", b"")
        kind = _CALLS.get(path)
        if kind is None:
            self.h2.send_headers(
                stream_id,
                (
                    *_RESPONSE_HEADERS,
                    (b"grpc-status", str(UNIMPLEMENTED).encode()),
                    (
                        b"grpc-message",
                        grpc_message(f"unknown method {path.decode(errors='replace')}"),
                    ),
                ),
                end_stream=True,
            )
            return
        self.calls[stream_id] = kind(self, stream_id)

    # Sending

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def finished(self, call: Call) -> None:
        self.calls.pop(call.stream_id, None)
        if not self.calls and self._idle is not None:
            self._idle.set()

    def go_away(self) -> None:
        """Tells the client this connection takes no new calls (those open go on)."""
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self.flush()

    async def flushed(self) -> None:
        """Returns once every call on this connection has sent its last frame."""
        while self.calls and not self.closed:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Call:
    """One RPC on one HTTP/2 stream: messages in, one or more answers out."""

    def __init__(self, connection: Connection, stream_id: int) -> None:
        self.connection = connection
        self.handler = connection.handler
        self.stream_id = stream_id
        self._buffer = bytearray()
        self._outbox = bytearray()
        self._trailers: tuple[tuple[bytes, bytes], ...] | None = None
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

    def end_of_requests(self) -> None:
        """The client sent its last message."""

    def gone(self) -> None:
        """The client reset the stream or the connection closed: nothing more is sent."""
        self.open = False

    # Answers

    def send_headers(self) -> None:
        if not self._headers_sent:
            self._headers_sent = True
            self.connection.h2.send_headers(self.stream_id, _RESPONSE_HEADERS)

    def queue(self, message: bytes) -> None:
        """Queues ``message``; ``pump`` (or ``finish``) sends it."""
        if self.open:
            self.send_headers()
            self._outbox += framed(message)

    def send(self, message: bytes) -> None:
        self.queue(message)
        self.pump()

    def answer(self, response: pb.ExecuteResponse) -> None:
        """Ends the call with its one answer, in one write to the socket."""
        self.queue(response.SerializeToString())
        self.finish()

    def finish(self, status: int = OK, message: str = "") -> None:
        """Ends the call with ``status`` once every queued message is sent."""
        if not self.open or self._trailers is not None:
            return
        self.send_headers()
        self._trailers = (
            _OK_TRAILERS
            if status == OK
            else ((b"grpc-status", str(status).encode()), (b"grpc-message", grpc_message(message)))
        )
        self.pump()

    def fail(self, status: int, message: str) -> None:
        LOGGER.info("ending a call with status %d: %s", status, message)
        self.finish(status, message)

    def pump(self) -> None:
        """Sends as much of the outbox as the client's flow-control window allows, then
        the trailers once it is empty."""
        if not self.open:
            return
        h2_connection = self.connection.h2
        try:
            while self._outbox:
                window = h2_connection.local_flow_control_window(self.stream_id)
                size = min(window, h2_connection.max_outbound_frame_size, len(self._outbox))
                if size <= 0:
                    break  # WindowUpdated calls again
                h2_connection.send_data(self.stream_id, bytes(self._outbox[:size]))
                del self._outbox[:size]
            if not self._outbox and self._trailers is not None:
                h2_connection.send_headers(self.stream_id, self._trailers, end_stream=True)
                self.open = False
                self.connection.finished(self)
        except h2.exceptions.ProtocolError:  # the stream closed under us
            self.gone()
            self.connection.finished(self)
        self.connection.flush()


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
                self.answer(self.handler.error("an Exec stream must start with a command event"))
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
            self.answer(self.handler.error("an Exec stream must start with a command event"))

    def _done(self, work: asyncio.Task[pb.ExecuteResponse]) -> None:
        if not work.cancelled():
            self.answer(work.result())
        elif self._cancelled_by_client:
            self.answer(self.handler.error("the request was cancelled by the client"))
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
        self._why_unreadable = (
            status,
            f"{reason}; the requests before it were answered, and the stream was ended",
        )
        self.end_of_requests()

    def end_of_requests(self) -> None:
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
