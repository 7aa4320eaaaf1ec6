"""h2_server's own encodings: the grpc-message trailer and the message prefix."""

from __future__ import annotations

from worker_runtime.buck2.h2_server import PREFIX, framed, grpc_message


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
