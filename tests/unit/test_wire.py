"""The hand-written WorkRequest encoder gives exactly protobuf's bytes, and its errors."""

from __future__ import annotations

import random

import pytest

from worker_runtime.proto import bazel_worker_pb2 as pb
from worker_runtime.protocol.framing import ProtoFraming
from worker_runtime.protocol.messages import WorkInput, WorkRequest
from worker_runtime.protocol.wire import INT32_MAX, INT32_MIN, encode_varint, encode_work_request


def protobuf_bytes(request: WorkRequest) -> bytes:
    """What protobuf's own serializer makes of the same request."""
    message = pb.WorkRequest(
        arguments=request.arguments,
        request_id=request.request_id,
        cancel=request.cancel,
        verbosity=request.verbosity,
        sandbox_dir=request.sandbox_dir,
    )
    for item in request.inputs:
        message.inputs.add(path=item.path, digest=item.digest)
    return message.SerializeToString()


SHA = bytes(range(32))

CASES = {
    "empty": WorkRequest(arguments=()),
    "the prelude's request": WorkRequest(
        arguments=("@buck-out/v2/tmp/args",),
        inputs=tuple(WorkInput(f"buck-out/v2/gen/root/src/F{i}.java", SHA) for i in range(16)),
        request_id=7,
    ),
    "empty and non-ASCII arguments": WorkRequest(arguments=("", "é", "日本", "\U0001f600", "\x00")),
    "an argument of 127, 128 and 20,000 bytes": WorkRequest(
        arguments=("a" * 127, "b" * 128, "c" * 20_000)
    ),
    "inputs with a field left empty": WorkRequest(
        arguments=("x",),
        inputs=(WorkInput("", SHA), WorkInput("p", b""), WorkInput("", b""), WorkInput("p", SHA)),
    ),
    "inputs at the one-byte boundary": WorkRequest(
        arguments=(),
        inputs=tuple(WorkInput("p" * n, SHA) for n in (90, 91, 92, 93, 94, 95, 96, 300)),
    ),
    "hex digests and paths about each length's boundaries": WorkRequest(
        arguments=(),
        inputs=tuple(
            WorkInput("p" * n, b"ab" * 32)
            for n in (1, 59, 60, 61, 127, 128, 129, 15_999, 16_000, 16_500)
        ),
    ),
    "digests about their length's boundary": WorkRequest(
        arguments=(),
        inputs=tuple(WorkInput(p, b"d" * n) for p in ("p", "p" * 200) for n in (127, 128, 129)),
    ),
    "a long digest and a non-ASCII path": WorkRequest(
        arguments=(), inputs=(WorkInput("ü/ß", b"\xff" * 200), WorkInput("ü" * 50, SHA))
    ),
    "every scalar set": WorkRequest(
        arguments=("a",), request_id=300, cancel=True, verbosity=10, sandbox_dir="sand/box"
    ),
    "int32 limits": WorkRequest(arguments=(), request_id=INT32_MAX, verbosity=INT32_MIN),
    "negative int32s": WorkRequest(arguments=(), request_id=-1, verbosity=-128),
    "one-byte request ids": WorkRequest(arguments=(), request_id=127),
    "a cancel alone": WorkRequest(arguments=(), request_id=4, cancel=True),
}


@pytest.mark.parametrize("request_", CASES.values(), ids=CASES.keys())
def test_same_bytes_as_protobuf(request_: WorkRequest) -> None:
    encoded = encode_work_request(request_)
    assert encoded == protobuf_bytes(request_)
    parsed = pb.WorkRequest.FromString(encoded)
    assert tuple(parsed.arguments) == request_.arguments
    assert [(i.path, i.digest) for i in parsed.inputs] == [
        (i.path, i.digest) for i in request_.inputs
    ]


def test_same_bytes_as_protobuf_for_random_requests() -> None:
    rng = random.Random(15)
    alphabet = "ab/._-éü日\U0001f600"
    for _ in range(500):
        request = WorkRequest(
            arguments=tuple(
                "".join(rng.choices(alphabet, k=rng.choice((0, 1, 40, 130))))
                for _ in range(rng.randrange(4))
            ),
            inputs=tuple(
                WorkInput(
                    "".join(rng.choices(alphabet, k=rng.choice((0, 5, 60, 200)))),
                    rng.randbytes(rng.choice((0, 20, 32, 64, 130))),
                )
                for _ in range(rng.randrange(4))
            ),
            request_id=rng.choice((0, 1, 127, 128, 16_384, INT32_MAX, -1, INT32_MIN)),
            cancel=rng.random() < 0.2,
            verbosity=rng.choice((0, 0, 10, -1)),
            sandbox_dir=rng.choice(("", "s", "sandbox/" * 20)),
        )
        assert encode_work_request(request) == protobuf_bytes(request), request


def test_the_framing_prefixes_the_length() -> None:
    request = CASES["an argument of 127, 128 and 20,000 bytes"]
    body = protobuf_bytes(request)
    assert ProtoFraming().encode(request) == encode_varint(len(body)) + body


@pytest.mark.parametrize("field", ["request_id", "verbosity"])
@pytest.mark.parametrize("value", [INT32_MAX + 1, INT32_MIN - 1])
def test_an_int32_out_of_range_is_refused_as_protobuf_refuses_it(field: str, value: int) -> None:
    request = WorkRequest(arguments=(), **{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        protobuf_bytes(request)
    with pytest.raises(ValueError, match=f"WorkRequest.{field} {value} does not fit an int32"):
        encode_work_request(request)


@pytest.mark.parametrize(
    "request_",
    [
        WorkRequest(arguments=("ok", "\udcff")),
        WorkRequest(arguments=(), inputs=(WorkInput("\ud800", SHA),)),
        WorkRequest(arguments=(), sandbox_dir="\udc80"),
    ],
    ids=["argument", "input path", "sandbox_dir"],
)
def test_a_lone_surrogate_is_refused_as_protobuf_refuses_it(request_: WorkRequest) -> None:
    with pytest.raises(UnicodeEncodeError):
        protobuf_bytes(request_)
    with pytest.raises(UnicodeEncodeError):
        encode_work_request(request_)


def test_varints() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(300) == b"\xac\x02"
    assert encode_varint((1 << 64) - 1) == b"\xff" * 9 + b"\x01"
    with pytest.raises(ValueError, match="cannot hold -1"):
        encode_varint(-1)
