"""worker_runtime/buck2/http2.py frame by frame, with a transport that records what the
server writes: the preface and settings, pings, header blocks (padded, prioritised,
continued, fully encoded and indexed), flow control both ways, resets and violations."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path
from typing import Any, cast

import hpack

from worker_runtime.buck2 import http2
from worker_runtime.buck2.h2_server import H2SocketServer, unknown_method_message
from worker_runtime.buck2.http2 import PREFACE, Http2Connection, frame


class Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class Recorder(Http2Connection):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int, bytes]] = []
        self.transport = Transport()
        self.connection_made(self.transport)  # type: ignore[arg-type]
        self.encoder = hpack.Encoder()

    def stream_started(self, stream_id: int, path: bytes) -> None:
        self.events.append(("started", stream_id, path))

    def stream_data(self, stream_id: int, data: bytes) -> None:
        self.events.append(("data", stream_id, data))

    def stream_ended(self, stream_id: int) -> None:
        self.events.append(("ended", stream_id, b""))

    def stream_reset(self, stream_id: int) -> None:
        self.events.append(("reset", stream_id, b""))

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        """What the server wrote since the last call, as (type, flags, stream, payload)."""
        data, found = bytes(self.transport.written), []
        self.transport.written.clear()
        while data:
            high, low, kind, flags, stream_id = http2.FRAME_HEADER.unpack_from(data)
            length = (high << 16) | low
            found.append((kind, flags, stream_id, data[9 : 9 + length]))
            data = data[9 + length :]
        return found

    def request_headers(self, path: bytes) -> bytes:
        return self.encoder.encode(
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ]
        )


def connected(settings: bytes = b"") -> Recorder:
    connection = Recorder()
    connection.frames()
    connection.data_received(PREFACE + frame(http2.SETTINGS, 0, 0, settings))
    connection.frames()  # its settings' acknowledgement
    return connection


def test_the_server_sends_its_settings_and_acknowledges_the_client_s() -> None:
    connection = Recorder()
    kinds = [f[0] for f in connection.frames()]
    assert kinds == [http2.SETTINGS, http2.WINDOW_UPDATE]
    connection.data_received(PREFACE + frame(http2.SETTINGS, 0, 0))
    assert connection.frames() == [(http2.SETTINGS, http2.ACK, 0, b"")]


def test_the_server_says_how_large_a_header_list_it_takes() -> None:
    """It advertised none, and ended the connection on a block past what its decoder
    takes (64 KiB decoded), every other stream on it failing."""
    (settings, _) = Recorder().frames()
    pairs = struct.iter_unpack(">HI", settings[3])
    assert dict(pairs)[http2.SETTINGS_MAX_HEADER_LIST_SIZE] == 1 << 16


def test_a_header_block_past_the_advertised_size_ends_the_connection_unread() -> None:
    connection = connected()
    block = b"\x00" * ((1 << 16) + 1)  # never decoded: its size alone ends it
    connection.data_received(frame(http2.HEADERS, http2.END_HEADERS, 1, block))
    (goaway,) = connection.frames()
    assert goaway[0] == http2.GOAWAY
    assert struct.unpack(">II", goaway[3][:8])[1] == http2.PROTOCOL_ERROR
    assert connection.events == []


def test_an_unknown_methods_answer_repeats_no_more_than_200_bytes_of_it() -> None:
    """The path was repeated whole: a 16 KiB path made an answer's header block larger
    than the frame a client takes by default, and hyper's h2 ends the connection."""
    assert unknown_method_message(b"/a/B") == "unknown method /a/B"
    long = unknown_method_message(b"/" + b"a" * 16_400)
    assert long.endswith("...") and len(long) < 300


def test_a_ping_is_answered_with_its_payload() -> None:
    connection = connected()
    connection.data_received(frame(http2.PING, 0, 0, b"12345678"))
    assert connection.frames() == [(http2.PING, http2.ACK, 0, b"12345678")]


def test_a_request_split_in_any_pieces_reads_the_same() -> None:
    connection = connected()
    block = connection.request_headers(b"/worker.Worker/Execute")
    wire = frame(http2.HEADERS, http2.END_HEADERS, 1, block) + frame(
        http2.DATA, http2.END_STREAM, 1, b"hello"
    )
    for byte in wire:
        connection.data_received(bytes([byte]))
    assert connection.events == [
        ("started", 1, b"/worker.Worker/Execute"),
        ("data", 1, b"hello"),
        ("ended", 1, b""),
    ]


def test_padded_prioritised_and_continued_header_blocks() -> None:
    connection = connected()
    block = connection.request_headers(b"/worker.WorkerStreaming/ExecuteStream")
    padded = bytes([3]) + struct.pack(">IB", 0, 16) + block[:4] + b"\0\0\0"
    connection.data_received(
        frame(http2.HEADERS, http2.PADDED | http2.PRIORITY, 1, padded)
        + frame(http2.CONTINUATION, 0, 1, block[4:6])
        + frame(http2.CONTINUATION, http2.END_HEADERS, 1, block[6:])
    )
    assert connection.events == [("started", 1, b"/worker.WorkerStreaming/ExecuteStream")]


def test_repeated_headers_are_read_from_the_table() -> None:
    """The second request's block is one-byte references only (the fast path)."""
    connection = connected()
    for stream_id in (1, 3):
        block = connection.request_headers(b"/worker.Worker/Execute")
        connection.data_received(
            frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, stream_id, block)
        )
    assert all(byte & 0x80 for byte in block)
    started = [e for e in connection.events if e[0] == "started"]
    assert started == [("started", i, b"/worker.Worker/Execute") for i in (1, 3)]


def test_answers_wait_for_the_client_s_window() -> None:
    settings = struct.pack(">HI", http2.SETTINGS_INITIAL_WINDOW_SIZE, 10)
    connection = connected(settings)
    block = connection.request_headers(b"/p")
    connection.data_received(frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1, block))
    connection.send(1, b"H", b"x" * 25, b"T")
    sent = connection.frames()
    assert [(f[0], f[3]) for f in sent] == [(http2.HEADERS, b"H"), (http2.DATA, b"x" * 10)]
    connection.data_received(frame(http2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 12)))
    assert [(f[0], f[3]) for f in connection.frames()] == [(http2.DATA, b"x" * 12)]
    connection.data_received(frame(http2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 100)))
    assert [(f[0], f[1], f[3]) for f in connection.frames()] == [
        (http2.DATA, 0, b"x" * 3),
        (http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, b"T"),
    ]


def test_a_reset_stream_is_reported_and_gets_nothing_more() -> None:
    connection = connected()
    block = connection.request_headers(b"/p")
    connection.data_received(frame(http2.HEADERS, http2.END_HEADERS, 1, block))
    connection.data_received(frame(http2.RST_STREAM, 0, 1, struct.pack(">I", 8)))
    assert connection.events[-1] == ("reset", 1, b"")
    connection.frames()
    connection.send(1, b"H", b"late", b"T")
    assert connection.frames() == []


def test_headers_on_a_stream_passed_over_reset_only_that_stream() -> None:
    """Stream 3 opened after 5 (closed by 5 opening, RFC 9113 5.1.1): nothing would
    ever answer it, so it is reset at once, and stream 5 goes on."""
    connection = connected()
    connection.data_received(
        frame(http2.HEADERS, http2.END_HEADERS, 5, connection.request_headers(b"/p"))
    )
    connection.data_received(
        frame(http2.HEADERS, http2.END_HEADERS, 3, connection.request_headers(b"/p"))
    )
    assert connection.frames() == [(http2.RST_STREAM, 0, 3, struct.pack(">I", 5))]
    assert [e for e in connection.events if e[0] == "started"] == [("started", 5, b"/p")]
    connection.send(5, b"H", b"answer", b"T")
    assert {f[2] for f in connection.frames()} == {5}  # answered as ever


def test_a_lost_connection_resets_its_open_streams() -> None:
    connection = connected()
    block = connection.request_headers(b"/p")
    connection.data_received(frame(http2.HEADERS, http2.END_HEADERS, 1, block))
    connection.connection_lost(None)
    assert connection.events[-1] == ("reset", 1, b"")


def test_the_server_tops_up_the_window_once_half_of_it_is_used() -> None:
    connection = connected()
    block = connection.request_headers(b"/p")
    connection.data_received(frame(http2.HEADERS, http2.END_HEADERS, 1, block))
    connection.frames()
    chunk = b"y" * (http2.RECEIVE_MAX_FRAME // 2)
    sent = 0
    while sent < http2.RECEIVE_WINDOW // 2:
        connection.data_received(frame(http2.DATA, 0, 1, chunk))
        sent += len(chunk)
    updates = {f[2]: struct.unpack(">I", f[3])[0] for f in connection.frames()}
    assert updates == {0: http2.RECEIVE_WINDOW // 2, 1: http2.RECEIVE_WINDOW // 2}


def goaway_code(connection: Recorder) -> int:
    goaways = [f for f in connection.frames() if f[0] == http2.GOAWAY]
    assert len(goaways) == 1 and connection.transport.closed
    return int(struct.unpack(">II", goaways[0][3])[1])


def test_bytes_that_are_not_the_preface_end_the_connection() -> None:
    connection = Recorder()
    connection.frames()
    connection.data_received(b"GET / HTTP/1.1\r\n")
    assert goaway_code(connection) == http2.PROTOCOL_ERROR


def test_a_frame_over_the_advertised_size_ends_the_connection() -> None:
    connection = connected()
    connection.data_received(struct.pack(">BHBBI", 0xFF, 0xFFFF, http2.DATA, 0, 1))
    assert goaway_code(connection) == http2.FRAME_SIZE_ERROR


def test_a_header_block_that_does_not_decode_ends_the_connection() -> None:
    connection = connected()
    connection.data_received(frame(http2.HEADERS, http2.END_HEADERS, 1, b"\x80"))
    assert goaway_code(connection) == http2.COMPRESSION_ERROR
    assert connection.events == []


def test_an_interrupted_header_block_ends_the_connection() -> None:
    connection = connected()
    block = connection.request_headers(b"/p")
    connection.data_received(
        frame(http2.HEADERS, 0, 1, block[:3]) + frame(http2.PING, 0, 0, b"12345678")
    )
    assert goaway_code(connection) == http2.PROTOCOL_ERROR


class Failing(Recorder):
    def stream_started(self, stream_id: int, path: bytes) -> None:
        raise RuntimeError("a bug in a call")


def test_a_bug_while_reading_ends_only_that_connection_with_internal_error() -> None:
    connection = Failing()
    connection.data_received(PREFACE + frame(http2.SETTINGS, 0, 0))
    connection.frames()
    block = connection.request_headers(b"/p")
    connection.data_received(frame(http2.HEADERS, http2.END_HEADERS, 1, block))
    assert goaway_code(connection) == http2.INTERNAL_ERROR


def test_window_updates_of_zero_or_past_the_limit_are_errors_of_their_scope() -> None:
    """RFC 9113 6.9: an increment of 0 is a PROTOCOL_ERROR, a window past 2^31-1 a
    FLOW_CONTROL_ERROR; on a stream they end that stream only (reset, its request
    cancelled), on the connection the connection. Both were ignored on a stream."""
    for increment, code in ((0, http2.PROTOCOL_ERROR), (0x7FFFFFFF, http2.FLOW_CONTROL_ERROR)):
        connection = connected()
        block = connection.request_headers(b"/p")
        connection.data_received(frame(http2.HEADERS, http2.END_HEADERS, 1, block))
        connection.data_received(frame(http2.HEADERS, http2.END_HEADERS, 3, block))
        connection.frames()
        connection.data_received(frame(http2.WINDOW_UPDATE, 0, 1, struct.pack(">I", increment)))
        assert connection.frames() == [(http2.RST_STREAM, 0, 1, struct.pack(">I", code))]
        assert connection.events[-1] == ("reset", 1, b"") and not connection.transport.closed
        connection.send(3, b"H", b"answer", b"T")
        assert {f[2] for f in connection.frames()} == {3}  # the other stream goes on
    connection = connected()
    connection.data_received(frame(http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)))
    assert goaway_code(connection) == http2.PROTOCOL_ERROR


def test_a_settings_change_that_overflows_a_streams_window_ends_the_connection() -> None:
    connection = connected()
    block = connection.request_headers(b"/p")
    connection.data_received(frame(http2.HEADERS, http2.END_HEADERS, 1, block))
    connection.data_received(frame(http2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 0x7FFF0000)))
    connection.frames()
    settings = struct.pack(">HI", http2.SETTINGS_INITIAL_WINDOW_SIZE, 0x7FFFFFFF)
    connection.data_received(frame(http2.SETTINGS, 0, 0, settings))
    assert goaway_code(connection) == http2.FLOW_CONTROL_ERROR


def test_data_on_a_stream_never_opened_ends_the_connection() -> None:
    connection = connected()
    connection.data_received(frame(http2.DATA, 0, 7, b"\0\0\0\0\0"))
    assert goaway_code(connection) == http2.PROTOCOL_ERROR


class AnswersAtOnce(Recorder):
    """Answers a stream the moment it starts, or the moment its data comes (as an unknown
    method, or a request that cannot be read, are answered)."""

    def __init__(self, on: str) -> None:
        super().__init__()
        self.on = on

    def stream_started(self, stream_id: int, path: bytes) -> None:
        super().stream_started(stream_id, path)
        if self.on == "headers":
            self.send(stream_id, b"H", b"", b"T")

    def stream_data(self, stream_id: int, data: bytes) -> None:
        super().stream_data(stream_id, data)
        if self.on == "data":
            self.send(stream_id, b"H", b"", b"T")


def test_a_stream_the_client_closed_and_answered_at_once_is_not_reset() -> None:
    """The stream was marked closed by the client only after it was handed on, so an
    answer completed at once was followed by RST_STREAM(NO_ERROR) on a closed stream."""
    for on in ("headers", "data"):
        connection = AnswersAtOnce(on)
        connection.frames()
        connection.data_received(PREFACE + frame(http2.SETTINGS, 0, 0))
        connection.frames()
        block = connection.request_headers(b"/p")
        flags = http2.END_HEADERS | (http2.END_STREAM if on == "headers" else 0)
        connection.data_received(frame(http2.HEADERS, flags, 1, block))
        if on == "data":
            connection.data_received(frame(http2.DATA, http2.END_STREAM, 1, b"\0\0\0\0\0"))
        kinds = [f[0] for f in connection.frames() if f[0] != http2.WINDOW_UPDATE]
        assert kinds == [http2.HEADERS, http2.HEADERS], on
        assert ("ended", 1, b"") not in connection.events  # answered: nothing left to end


def test_the_servers_umask_is_never_in_force_while_other_tasks_run(tmp_path: Path) -> None:
    """The socket was bound by an awaited call with the umask 0177 set around it: on
    asyncio's own loop other tasks ran meanwhile (a backend starting inherits it), not
    only on uvloop's, which binds at once."""

    async def scenario() -> list[int]:
        seen: list[int] = []

        async def watch() -> None:
            for _ in range(20):
                current = os.umask(0o022)
                os.umask(current)
                seen.append(current)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        server = H2SocketServer(cast(Any, None), str(tmp_path / "s.sock"))
        await server.start()
        await watcher
        assert (tmp_path / "s.sock").stat().st_mode & 0o777 == 0o600
        assert server._server is not None
        server._server.close()
        return seen

    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        assert 0o177 not in runner.run(scenario())
