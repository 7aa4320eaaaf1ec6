"""h2_server's calls fed a stream's frames directly, with a stand-in for the connection:
how each ends when the client's last frame cuts a message short."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import hpack

from worker_runtime.buck2.h2_server import Call, StreamCall, UnaryCall, framed
from worker_runtime.proto import buck2_worker_pb2 as pb


@dataclass
class Handler:
    """Starts nothing: keeps each request's answer callback for the test to call."""

    started: list[Callable[[pb.ExecuteResponse], None]] = field(default_factory=list)

    def start(
        self, command: pb.ExecuteCommand, answer: Callable[[pb.ExecuteResponse], None]
    ) -> None:
        self.started.append(answer)


@dataclass
class Connection:
    """What a call sends, and whether it ended."""

    handler: Handler = field(default_factory=Handler)
    trailers: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    messages: int = 0

    def send(self, stream_id: int, headers: bytes | None, data: bytes, end: bytes | None) -> None:
        self.messages += bool(data)
        if end is not None:
            self.trailers.append(
                [(bytes(k), bytes(v)) for k, v in hpack.Decoder().decode(end, raw=True)]
            )

    def finished(self, call: Call) -> None:
        pass


def status_of(connection: Connection) -> tuple[bytes, bytes]:
    (trailers,) = connection.trailers
    found = dict(trailers)
    return found[b"grpc-status"], found.get(b"grpc-message", b"")


def test_a_stream_whose_last_message_is_cut_short_ends_internal_after_its_answers() -> None:
    connection = Connection()
    call = StreamCall(connection, 1)  # type: ignore[arg-type]
    whole = framed(pb.ExecuteCommandStream(id=1).SerializeToString())
    cut = framed(
        pb.ExecuteCommandStream(id=2, request=pb.ExecuteCommand(argv=[b"x"])).SerializeToString()
    )
    call.feed(whole + cut[:-3])
    call.end_of_stream()
    assert len(connection.handler.started) == 1 and connection.trailers == []  # still owed one
    connection.handler.started[0](pb.ExecuteResponse(exit_code=0))
    status, message = status_of(connection)
    assert status == b"13" and connection.messages == 1
    assert b"ended 9 bytes into a message it did not finish" in message


def test_a_unary_call_cut_short_is_internal_once() -> None:
    connection = Connection()
    call = UnaryCall(connection, 1)  # type: ignore[arg-type]
    call.feed(framed(pb.ExecuteCommand(argv=[b"echo"]).SerializeToString())[:-2])
    call.end_of_stream()
    status, message = status_of(connection)
    assert status == b"13" and b"into a message it did not finish" in message
    assert connection.handler.started == []
