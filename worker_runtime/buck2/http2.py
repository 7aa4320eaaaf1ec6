"""HTTP/2 for a gRPC server on a Unix socket, as much of it as gRPC needs (RFC 9113): the
connection preface, frames in and out, flow control both ways, HPACK header blocks in
(decoded with the ``hpack`` package) and constant header blocks out. No server push,
priorities are ignored, and a client connects with prior knowledge, as gRPC clients do.

``Http2Connection`` is the protocol for one connection; a subclass gets each stream's
events (``stream_started``, ``stream_data``, ``stream_ended``, ``stream_reset``) and
answers with ``send``, which queues what the client's flow-control window cannot take
yet. Everything written while a batch of incoming frames is handled goes out in one
write at its end.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import cast

import hpack
import hpack.exceptions

LOGGER = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
DATA = 0x0
HEADERS = 0x1
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY = 0x20

# Settings.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# Error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
COMPRESSION_ERROR = 0x9

#: A frame's header: its length in 24 bits (as 8 + 16), type, flags and stream id.
FRAME_HEADER = struct.Struct(">BHBBI")
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1
#: What this server lets a client send ahead, per stream and per connection; it is
#: topped up once half of it is used, so a small request costs no WINDOW_UPDATE.
RECEIVE_WINDOW = 1 << 22
#: The largest frame this server takes (the client's messages come in fewer frames).
RECEIVE_MAX_FRAME = 1 << 20
#: The most a header block (HEADERS and its CONTINUATIONs) may hold, and the header list
#: size advertised: the most the HPACK decoder takes decoded (a larger block cannot be
#: decoded, and one undecoded puts the connection's table out of step: it ends the
#: connection). It also bounds the decoder's work on a hostile block.
MAX_HEADER_BLOCK = 1 << 16


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def hpack_length(length: int) -> bytes:
    """A string's length as an HPACK integer with a 7-bit prefix, Huffman bit clear."""
    if length < 127:
        return bytes([length])
    out = bytearray([127])
    length -= 127
    while length >= 128:
        out.append(length % 128 + 128)
        length //= 128
    out.append(length)
    return bytes(out)


def literal_header(name: bytes, value: bytes) -> bytes:
    """One header field as an HPACK literal without indexing and with a literal name, so
    that it changes no table (RFC 7541 6.2.2)."""
    return b"\x00" + hpack_length(len(name)) + name + hpack_length(len(value)) + value


class ProtocolViolation(Exception):
    """The client broke the protocol: the connection ends with GOAWAY and this code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Stream:
    __slots__ = ("ended_remote", "outbox", "received", "send_window", "trailers")

    def __init__(self, send_window: int) -> None:
        self.send_window = send_window
        self.outbox = bytearray()
        #: The block to end the stream with once the outbox is sent.
        self.trailers: bytes | None = None
        self.received = 0  # bytes since the stream's window was last topped up
        self.ended_remote = False


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection, server side; subclasses handle the streams."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._in = bytearray()
        self._out = bytearray()
        self._batching = False
        self._preface_seen = False
        self._decoder = hpack.Decoder()
        #: A header block still waiting for its CONTINUATION frames: stream id, flags, bytes.
        self._partial: tuple[int, int, bytearray] | None = None
        self._streams: dict[int, _Stream] = {}
        self._last_stream_id = 0
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._received = 0  # connection bytes since its window was last topped up
        self._all_sent: asyncio.Event | None = None
        self.closed = False

    # To override.

    def stream_started(self, stream_id: int, path: bytes) -> None: ...

    def stream_data(self, stream_id: int, data: bytes) -> None: ...

    def stream_ended(self, stream_id: int) -> None:
        """The client sent its last frame on the stream."""

    def stream_reset(self, stream_id: int) -> None:
        """The client reset the stream, or the connection closed with it open."""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        settings = struct.pack(
            ">HIHIHIHI",
            SETTINGS_INITIAL_WINDOW_SIZE,
            RECEIVE_WINDOW,
            SETTINGS_MAX_FRAME_SIZE,
            RECEIVE_MAX_FRAME,
            SETTINGS_HEADER_TABLE_SIZE,
            4096,
            SETTINGS_MAX_HEADER_LIST_SIZE,
            MAX_HEADER_BLOCK,
        )
        self._transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", RECEIVE_WINDOW - DEFAULT_WINDOW))
        )

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._batching = True
        try:
            self._receive(data)
        except ProtocolViolation as exc:
            LOGGER.warning("closing a connection that broke HTTP/2: %s", exc)
            self.go_away(exc.code)
            self.close()
        except Exception:  # a bug here: this connection ends, the others go on
            LOGGER.exception("internal error while reading a connection; closing it")
            self.go_away(INTERNAL_ERROR)
            self.close()
        finally:
            self._batching = False
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        streams = list(self._streams)
        self._streams.clear()
        for stream_id in streams:
            self.stream_reset(stream_id)
        if self._all_sent is not None:
            self._all_sent.set()

    # Frames in.

    def _receive(self, data: bytes) -> None:
        buffer = self._in
        buffer += data
        start = 0
        if not self._preface_seen:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    raise ProtocolViolation(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
                return
            if buffer[: len(PREFACE)] != PREFACE:
                raise ProtocolViolation(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
            self._preface_seen = True
            start = len(PREFACE)
        end = len(buffer)
        while end - start >= 9:
            high, low, kind, flags, stream_id = FRAME_HEADER.unpack_from(buffer, start)
            length = (high << 16) | low
            if length > RECEIVE_MAX_FRAME:
                raise ProtocolViolation(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            if end - start - 9 < length:
                break
            payload = bytes(buffer[start + 9 : start + 9 + length])
            start += 9 + length
            self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
            if self.closed:
                return
        del buffer[:start]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._partial is not None and kind != CONTINUATION:
            raise ProtocolViolation(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "a malformed PING")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if len(payload) != 4 or not stream_id:
                raise ProtocolViolation(PROTOCOL_ERROR, "a malformed RST_STREAM")
            if stream_id in self._streams:
                self._forget(stream_id)
                self.stream_reset(stream_id)
        elif kind == GOAWAY:
            LOGGER.debug("the client sent GOAWAY")
        elif kind == PUSH_PROMISE:
            raise ProtocolViolation(PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 allows.

    @staticmethod
    def _unpadded(flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ProtocolViolation(PROTOCOL_ERROR, "padding longer than its frame")
        return payload[1 : len(payload) - payload[0]]

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "DATA on stream 0")
        self._received += len(payload)
        if self._received > RECEIVE_WINDOW:
            raise ProtocolViolation(FLOW_CONTROL_ERROR, "the client overran the window")
        if self._received >= RECEIVE_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received)))
            self._received = 0
        stream = self._streams.get(stream_id)
        if stream is None and stream_id > self._last_stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "DATA on a stream never opened")
        if stream is None or stream.ended_remote:
            return  # a stream that ended (its answer sent, or reset): its bytes are dropped
        stream.received += len(payload)
        data = self._unpadded(flags, payload)
        # Marked before the data is handed on: an answer it completes at once (a request
        # that cannot be read) must not reset a stream the client has closed.
        stream.ended_remote = bool(flags & END_STREAM)
        if data:
            self.stream_data(stream_id, data)
        if flags & END_STREAM:
            if stream_id in self._streams:
                self.stream_ended(stream_id)
        elif stream.received >= RECEIVE_WINDOW // 2 and stream_id in self._streams:
            self._write(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", stream.received)))
            stream.received = 0

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpadded(flags, payload)
        if flags & PRIORITY:
            block = block[5:]
        if len(block) > MAX_HEADER_BLOCK:
            raise ProtocolViolation(PROTOCOL_ERROR, "a header block over 64 KiB")
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, block)
        else:
            self._partial = (stream_id, flags, bytearray(block))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._partial is None or self._partial[0] != stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "a CONTINUATION without its HEADERS")
        block = self._partial[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ProtocolViolation(PROTOCOL_ERROR, "a header block over 64 KiB")
        if flags & END_HEADERS:
            started_flags = self._partial[1]
            self._partial = None
            self._header_block(stream_id, started_flags, bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            headers = self._decode(block)
        except hpack.exceptions.HPACKError as exc:
            raise ProtocolViolation(
                COMPRESSION_ERROR, f"a header block did not decode: {exc}"
            ) from None
        stream = self._streams.get(stream_id)
        if stream is not None:
            # Trailers of a request: only its end counts.
            if flags & END_STREAM and not stream.ended_remote:
                stream.ended_remote = True
                self.stream_ended(stream_id)
            return
        if stream_id % 2 == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "a client opened an even stream")
        if stream_id <= self._last_stream_id:
            # A stream that ended, or one passed over (closed by a higher one opening):
            # nothing will answer it, so the client is told at once rather than left to
            # wait for its deadline. Only that stream: the connection's others go on.
            self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", STREAM_CLOSED)))
            return
        self._last_stream_id = stream_id
        path = b""
        for name, value in headers:
            if name == b":path":
                path = value
                break
        stream = self._streams[stream_id] = _Stream(self._peer_initial_window)
        # Marked before the stream is handed on: an answer it completes at once (an
        # unknown method) must not reset a stream the client has closed.
        stream.ended_remote = bool(flags & END_STREAM)
        self.stream_started(stream_id, path)
        if flags & END_STREAM and stream_id in self._streams:
            self.stream_ended(stream_id)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """A header block's fields. A client that sends the same headers on every call
        (gRPC clients do) sends them, from its second call on, as one-byte references to
        its table: those are looked up directly, which changes no table, at a tenth of
        the cost of the full decoder."""
        if all(byte & 0x80 and byte != 0xFF for byte in block):
            table = self._decoder.header_table
            return [table.get_by_index(byte & 0x7F) for byte in block]
        return [
            (bytes(name), bytes(value)) for name, value in self._decoder.decode(block, raw=True)
        ]

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "a malformed WINDOW_UPDATE")
        increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise ProtocolViolation(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolViolation(FLOW_CONTROL_ERROR, "the window went past 2^31-1")
            for waiting in list(self._streams):
                self._pump(waiting)
        elif (stream := self._streams.get(stream_id)) is not None:
            stream.send_window += increment
            if not increment or stream.send_window > MAX_WINDOW:
                # That stream's error alone (RFC 9113, 6.9): reset, its request cancelled.
                code = FLOW_CONTROL_ERROR if increment else PROTOCOL_ERROR
                self._forget(stream_id)
                self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))
                self.stream_reset(stream_id)
                return
            self._pump(stream_id)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) % 6:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "a malformed SETTINGS")
        if flags & ACK:
            return
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolViolation(FLOW_CONTROL_ERROR, "an initial window over 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolViolation(
                            FLOW_CONTROL_ERROR, "a stream's window went past 2^31-1"
                        )
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise ProtocolViolation(PROTOCOL_ERROR, "a max frame size out of range")
                self._peer_max_frame = value
        self._write(frame(SETTINGS, ACK, 0))
        for waiting in list(self._streams):
            self._pump(waiting)

    # Frames out.

    def _write(self, data: bytes) -> None:
        self._out += data
        if not self._batching:
            self.flush()

    def flush(self) -> None:
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(bytes(self._out))
        self._out.clear()

    def send(
        self, stream_id: int, headers: bytes | None, data: bytes, trailers: bytes | None
    ) -> None:
        """Sends on an open stream, in one write: a ``headers`` block (the answer's first),
        then ``data``, then the ``trailers`` block that ends the stream. What the client's
        flow-control window cannot take yet is queued and sent as it opens."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.trailers is not None:
            return  # reset by the client, or already ended
        batching, self._batching = self._batching, True
        try:
            if headers is not None:
                self._out += frame(HEADERS, END_HEADERS, stream_id, headers)
            stream.outbox += data
            stream.trailers = trailers
            self._pump(stream_id)
        finally:
            self._batching = batching
        if not batching:
            self.flush()

    def _pump(self, stream_id: int) -> None:
        stream = self._streams[stream_id]
        outbox = stream.outbox
        while outbox:
            size = min(len(outbox), stream.send_window, self._send_window, self._peer_max_frame)
            if size <= 0:
                return  # a WINDOW_UPDATE sends the rest
            self._write(frame(DATA, 0, stream_id, bytes(outbox[:size])))
            del outbox[:size]
            stream.send_window -= size
            self._send_window -= size
        if stream.trailers is not None:
            self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, stream.trailers))
            self._forget(stream_id)
            if not stream.ended_remote:
                # The answer is complete: what the client still sends is not wanted.
                self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", NO_ERROR)))

    def _forget(self, stream_id: int) -> None:
        del self._streams[stream_id]
        if not self._streams and self._all_sent is not None:
            self._all_sent.set()

    async def all_sent(self) -> None:
        """Returns once every stream has sent its last frame (some may wait for the
        client's window), or the connection is gone."""
        while self._streams and not self.closed:
            self._all_sent = asyncio.Event()
            await self._all_sent.wait()

    def go_away(self, code: int = NO_ERROR) -> None:
        """Tells the client to open no more streams here (those open go on)."""
        if not self.closed:
            self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream_id, code)))

    def close(self) -> None:
        self.flush()
        if self._transport is not None:
            self._transport.close()
