"""Golden bytes and fault cases for the proto and JSON framings."""

from __future__ import annotations

import json

import pytest

from worker_runtime.errors import ProtocolError
from worker_runtime.proto import bazel_worker_pb2 as pb
from worker_runtime.protocol import framing as framing_module
from worker_runtime.protocol.framing import JsonFraming, ProtoFraming, quote_bytes
from worker_runtime.protocol.messages import WorkInput, WorkRequest, WorkResponse
from worker_runtime.protocol.wire import encode_varint


def test_proto_request_golden_bytes() -> None:
    request = WorkRequest(
        arguments=("a",), inputs=(WorkInput("x", b"\x01"),), request_id=5, verbosity=10
    )
    # arguments(1)="a", inputs(2)={path(1)="x", digest(2)=01}, request_id(3)=5, verbosity(5)=10
    body = (
        bytes.fromhex("0a0161")
        + bytes.fromhex("1206")
        + bytes.fromhex("0a0178120101")
        + bytes.fromhex("1805")
        + bytes.fromhex("280a")
    )
    assert ProtoFraming().encode(request) == bytes([len(body)]) + body


def test_varint_multi_byte() -> None:
    assert encode_varint(300) == b"\xac\x02"
    assert encode_varint(0) == b"\x00"


def test_proto_response_split_across_chunks() -> None:
    # exit_code(1)=2, output(2)="hi", request_id(3)=7
    body = bytes.fromhex("0802") + b"\x12\x02hi" + bytes.fromhex("1807")
    data = encode_varint(len(body)) + body
    framing = ProtoFraming()
    out: list[WorkResponse] = []
    for byte in data:
        out += framing.feed(bytes([byte]))
    assert out == [WorkResponse(exit_code=2, output="hi", request_id=7)]
    assert not framing.mid_message()


def test_proto_two_responses_in_one_chunk_and_empty_response() -> None:
    framing = ProtoFraming()
    out = framing.feed(b"\x00" + b"\x02\x08\x01")
    assert out == [WorkResponse(), WorkResponse(exit_code=1)]


def test_proto_large_response() -> None:
    output = "y" * (17 << 20)
    body = b"\x12" + encode_varint(len(output)) + output.encode()
    framing = ProtoFraming()
    data = encode_varint(len(body)) + body
    out: list[WorkResponse] = []
    for start in range(0, len(data), 1 << 18):
        out += framing.feed(data[start : start + (1 << 18)])
    assert len(out) == 1 and len(out[0].output) == 17 << 20


def test_a_response_past_the_limit_is_refused_before_it_is_all_read() -> None:
    """The executor's framings take responses up to the action's output budget: a
    longer one is refused from its length prefix (proto) or as soon as the buffered part
    passes the limit (JSON, where a worker may write one string that never ends)."""
    body = b"\x12" + encode_varint(2000) + b"y" * 2000
    with pytest.raises(ProtocolError, match="a response of 2003 bytes, more than the 1000"):
        ProtoFraming(1000).feed(encode_varint(len(body)) + body[:10])
    assert len(ProtoFraming(3000).feed(encode_varint(len(body)) + body)[0].output) == 2000
    endless = JsonFraming(1000)
    endless.feed(b'{"exitCode":0,"output":"' + b"z" * 900)
    with pytest.raises(ProtocolError, match="passed 1000 bytes, the most taken here"):
        endless.feed(b"z" * 200)
    whole = b'{"exitCode":0,"output":"' + b"z" * 2000 + b'"}'
    with pytest.raises(ProtocolError, match="of 2026 bytes is more than the 1000"):
        JsonFraming(1000).feed(whole)
    assert len(JsonFraming().feed(whole)[0].output) == 2000  # the runtime's: no budget


def test_a_json_response_that_never_ends_is_refused_past_what_protobuf_can_carry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a budget (the runtime's backends), a JSON response may be as large as the
    protobuf message it becomes, and no larger: a worker that writes one string forever
    is stopped there, not when the runtime runs out of memory."""
    monkeypatch.setattr(framing_module, "MAX_FRAME_BYTES", 1000)
    endless = JsonFraming()
    endless.feed(b'{"exitCode":0,"output":"' + b"z" * 900)
    with pytest.raises(ProtocolError, match="passed 1000 bytes, the most taken here"):
        endless.feed(b"z" * 200)


def test_proto_text_on_stdout_is_rejected_at_once_and_quoted() -> None:
    framing = ProtoFraming()
    with pytest.raises(ProtocolError) as info:
        framing.feed(b"Hello world\n")
    assert "not a WorkResponse field" in str(info.value)
    assert info.value.first_bytes.startswith(b"Hello world")


def test_proto_unknown_field_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="fields a WorkResponse does not have"):
        ProtoFraming().feed(b"\x04\x08\x01\x50\x03")


def test_proto_mid_message_is_reported() -> None:
    framing = ProtoFraming()
    assert framing.feed(b"\x05\x08") == []
    assert framing.mid_message()


def test_json_request_is_camel_case_without_defaults() -> None:
    encoded = JsonFraming().encode(WorkRequest(arguments=("a", "b"), request_id=3, sandbox_dir="s"))
    assert json.loads(encoded) == {"arguments": ["a", "b"], "requestId": 3, "sandboxDir": "s"}
    assert json.loads(JsonFraming().encode(WorkRequest(arguments=()))) == {"arguments": []}


def test_json_concatenated_objects_without_newlines_split_anywhere() -> None:
    data = b'{"exitCode":1,"output":"a}{\\"b","requestId":4}  {"output":"c"}\n{}'
    for split in range(len(data)):
        framing = JsonFraming()
        out = framing.feed(data[:split]) + framing.feed(data[split:])
        assert out == [
            WorkResponse(exit_code=1, output='a}{"b', request_id=4),
            WorkResponse(output="c"),
            WorkResponse(),
        ], split


def test_json_escaped_backslash_at_chunk_end() -> None:
    framing = JsonFraming()
    assert framing.feed(b'{"output":"a\\') == []
    assert framing.feed(b'\\"}') == [WorkResponse(output="a\\")]


def test_json_nested_objects_and_unknown_fields_are_ignored() -> None:
    out = JsonFraming().feed(b'{"extra":{"x":{}},"exitCode":0}')
    assert out == [WorkResponse()]


def test_json_snake_case_is_read_with_a_warning() -> None:
    (response,) = JsonFraming().feed(b'{"exit_code":3}')
    assert response.exit_code == 3
    assert "snake_case" in response.warnings[0]


def test_json_garbage_is_rejected_with_its_bytes() -> None:
    with pytest.raises(ProtocolError) as info:
        JsonFraming().feed(b"Starting worker...\n{}")
    assert info.value.first_bytes.startswith(b"Starting worker")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"exitCode":"one"}', "exit_code is not an integer"),
        (b'{"exitCode":"1.5"}', "exit_code is not an integer"),
        (b'{"exitCode":" 1"}', "exit_code is not an integer"),
        (b'{"exitCode":"1_0"}', "exit_code is not an integer"),
        (b'{"exitCode":null}', "exit_code is not an integer"),  # Bazel refuses it too
        (b'{"output":null}', "output is not a string"),
        (b'{"exitCode":1.5}', "exit_code is not an integer"),
        (b'{"exitCode":true}', "exit_code is not an integer"),
        (b'{"requestId":"2147483648"}', "request_id 2147483648 is out of the int32 range"),
        (b'{"output":5}', "output is not a string"),
        (b'{"wasCancelled":1}', "was_cancelled is not a boolean"),
        (b'{"wasCancelled":"yes"}', "was_cancelled is not a boolean"),
        (b'{"exitCode":1,"exit_code":2}', "appears twice"),
        # json.loads keeps the last: a failure read as a success (Bazel refuses it).
        (b'{"exitCode":1,"output":"error: failed","exitCode":0}', "exitCode appears twice"),
        (b'{"requestId":7,"requestId":3}', "requestId appears twice"),
        (b'{"output":"a","output":"b"}', "output appears twice"),
        (b'{"output":{"text":"a"}}', "output is not a string"),
        # int() refuses past 4,300 digits with a ValueError that escaped the framing.
        (b'{"exitCode":"' + b"1" * 5000 + b'"}', r"exit_code 1{20}\.\.\. is out of the int32"),
        (b'{"exitCode":"-' + b"9" * 30 + b'"}', r"exit_code -9{19}\.\.\. is out of the int32"),
        (b'{"output":"a",}', "not valid JSON"),
        (b'{"output":"\xff"}', "cannot be read as JSON .*utf-8"),
        (b'{"exitCode":' + b"9" * 5000 + b"}", "cannot be read as JSON .*4300 digits"),
        (b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "cannot be read as JSON .*recursion"),
    ],
)
def test_json_bad_values(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        JsonFraming().feed(data)


def test_json_values_are_read_as_bazels_reader_reads_them() -> None:
    """A worker may quote an integer or write it as a whole float (Bazel's Gson reader
    takes both), and write was_cancelled as it likes (Bazel never reads it); each once
    killed the backend as a protocol error."""
    data = (
        b'{"requestId":"3","exitCode":1.0,"output":"x","wasCancelled":"false"}'
        b'{"requestId":4,"wasCancelled":null}'
        b'{"requestId":"-0","exitCode":"2e0","wasCancelled":"true"}'
        b'{"exitCode":"-' + b"0" * 30 + b'1"}'
        b'{"exitCode":"' + b"0" * 5000 + b'7"}'  # int() of it raised past 4,300 digits
    )
    assert JsonFraming().feed(data) == [
        WorkResponse(exit_code=1, output="x", request_id=3),
        WorkResponse(exit_code=0, output="", request_id=4),
        WorkResponse(exit_code=2, output="", request_id=0, was_cancelled=True),
        WorkResponse(exit_code=-1, output="", request_id=0),
        WorkResponse(exit_code=7, output="", request_id=0),
    ]


@pytest.mark.parametrize("framing", [ProtoFraming, JsonFraming])
def test_an_error_carries_the_responses_before_the_bad_bytes(framing: type) -> None:
    ok = WorkResponse(exit_code=0, output="answered", request_id=0)
    if framing is ProtoFraming:
        body = pb.WorkResponse(output="answered").SerializeToString()
        data = encode_varint(len(body)) + body + b"done\n"
    else:
        data = b'{"output":"answered"}done\n'
    with pytest.raises(ProtocolError) as info:
        framing().feed(data)
    assert info.value.parsed == [ok]


def test_quote_bytes_text_then_hex() -> None:
    assert quote_bytes(b"abc") == "'abc'"
    assert quote_bytes(b"Hello!\n\x0f\x12") == "'Hello!\\n' then hex 0f 12"
    assert quote_bytes(b"\x0f\x12") == "hex 0f 12"
