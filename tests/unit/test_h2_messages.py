"""h2_server's own encodings: the grpc-message trailer and the message prefix."""

from __future__ import annotations

import hpack

from worker_runtime.buck2.h2_server import PREFIX, RESPONSE_HEADERS, framed, grpc_message, trailers


def test_grpc_message_percent_encodes_what_a_header_cannot_hold() -> None:
    assert grpc_message("plain text: ok") == b"plain text: ok"
    assert grpc_message("100% done") == b"100%25 done"
    assert grpc_message("line\nbreak") == b"line%0Abreak"
    assert grpc_message("café") == b"caf%C3%A9"


def test_framed_prefixes_an_uncompressed_length() -> None:
    message = b"x" * 300
    frame = framed(message)
    assert PREFIX.unpack_from(frame) == (0, 300)
    assert frame[PREFIX.size :] == message


def test_the_constant_header_blocks_decode_as_meant() -> None:
    """The answer's blocks are written by hand as HPACK: an independent decoder reads them,
    for any length of message."""
    decoder = hpack.Decoder()
    assert decoder.decode(RESPONSE_HEADERS, raw=True) == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
    ]
    for length in (0, 126, 127, 128, 300, 20_000):
        message = "m" * length
        assert decoder.decode(trailers(3, message), raw=True) == [
            (b"grpc-status", b"3"),
            (b"grpc-message", message.encode()),
        ]
    assert decoder.decode(trailers(0, "ignored"), raw=True) == [(b"grpc-status", b"0")]
