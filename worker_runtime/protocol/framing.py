"""Wire framing of WorkRequest/WorkResponse: length-prefixed protobuf and streamed JSON.

Each framing encodes requests to bytes and decodes responses incrementally: ``feed``
takes whatever bytes arrived and returns the complete responses among them, raising
``ProtocolError`` as soon as the bytes cannot be a valid response (the error carries
the responses that came before the bad bytes).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, NoReturn, Protocol

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError

from worker_runtime.errors import ProtocolError
from worker_runtime.proto import bazel_worker_pb2 as pb
from worker_runtime.protocol.messages import WorkRequest, WorkResponse
from worker_runtime.protocol.wire import INT32_MAX, INT32_MIN, encode_varint, encode_work_request

#: How many leading bytes of bad output an error quotes (Bazel keeps 4 KiB; we quote less).
QUOTE_BYTES = 256

#: A length prefix above this is taken for text on stdout, not a response.
MAX_FRAME_BYTES = 1 << 31

# Tags a WorkResponse field can start with: (field number << 3) | wire type.
_RESPONSE_TAGS = frozenset({(1 << 3) | 0, (2 << 3) | 2, (3 << 3) | 0, (4 << 3) | 0})


def largest_taken(max_response_bytes: int | None) -> int:
    """The largest response a framing takes: ``max_response_bytes`` (the runtime's
    ``max_response_mb``, the executor's output budget) if given, and never more than
    MAX_FRAME_BYTES."""
    if max_response_bytes is None:
        return MAX_FRAME_BYTES
    return min(max_response_bytes, MAX_FRAME_BYTES)


class Framing(Protocol):
    """Encodes requests and incrementally decodes responses for one backend process."""

    name: str

    def encode(self, request: WorkRequest) -> bytes: ...

    def feed(self, data: bytes) -> list[WorkResponse]: ...

    def mid_message(self) -> bool:
        """True while a response has started arriving but is not complete."""
        ...

    def first_bytes(self) -> bytes:
        """The first bytes of the response being read (or of the last one), for errors."""
        ...


class _Feeding:
    """``feed`` for both framings: what ``_feed`` parsed before it raised goes with the
    error (a worker that answers, then prints to stdout, has answered)."""

    def _feed(self, data: bytes, out: list[WorkResponse]) -> None:
        raise NotImplementedError

    def feed(self, data: bytes) -> list[WorkResponse]:
        out: list[WorkResponse] = []
        try:
            self._feed(data, out)
        except ProtocolError as exc:
            exc.parsed = out
            raise
        return out


class ProtoFraming(_Feeding):
    """Protobuf messages each preceded by a base-128 varint length (Bazel's default).

    Responses are parsed straight from the bytes as they arrive. Only the tail of an
    incomplete one is kept (it starts at that response's first byte), and it is parsed
    again only once all of its announced length is there."""

    name = "proto"

    def __init__(self, max_response_bytes: int | None = None) -> None:
        self._buffer = bytearray()
        #: The largest response taken: the executor's output budget, else any plausible.
        self._max = largest_taken(max_response_bytes)
        #: Bytes the buffered response needs in all (0 while its length prefix is incomplete).
        self._need = 0

    def encode(self, request: WorkRequest) -> bytes:
        body = encode_work_request(request)
        return encode_varint(len(body)) + body

    def mid_message(self) -> bool:
        return bool(self._buffer)

    def _feed(self, data: bytes, out: list[WorkResponse]) -> None:
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._need:
                return
            view = bytes(self._buffer)
        else:
            view = data
        pos, size = 0, len(view)
        while pos < size:
            # The length prefix: a varint, almost always one or two bytes.
            length, shift, start = 0, 0, pos
            while True:
                if start >= size:
                    self._keep(view, pos, 0)
                    return
                byte = view[start]
                length |= (byte & 0x7F) << shift
                start += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift >= 70:
                    self._fail("the length prefix is longer than 10 bytes", view, pos)
            if length > self._max:
                self._fail(
                    f"a length prefix of {length} bytes is not plausible"
                    if length > MAX_FRAME_BYTES
                    else f"it announced a response of {length} bytes, more than the "
                    f"{self._max} taken here",
                    view,
                    pos,
                )
            if length and start < size and view[start] not in _RESPONSE_TAGS:
                self._fail(
                    f"the byte after a length prefix of {length} is not a WorkResponse field",
                    view,
                    pos,
                )
            end = start + length
            if end > size:
                self._keep(view, pos, end - pos)
                return
            out.append(self._parse(view[start:end], view, pos))
            pos = end
        self._keep(view, size, 0)

    def _keep(self, view: bytes, pos: int, need: int) -> None:
        self._buffer = bytearray(view[pos:])
        self._need = need

    def _parse(self, body: bytes, view: bytes, pos: int) -> WorkResponse:
        message = pb.WorkResponse()
        try:
            message.ParseFromString(body)
        except DecodeError:
            self._fail("the message is not a valid WorkResponse", view, pos)
        if len(unknown_fields.UnknownFieldSet(message)):
            self._fail("the message has fields a WorkResponse does not have", view, pos)
        return WorkResponse(
            exit_code=message.exit_code,
            output=message.output,
            request_id=message.request_id,
            was_cancelled=message.was_cancelled,
        )

    def first_bytes(self) -> bytes:
        return bytes(self._buffer[:QUOTE_BYTES])

    def _fail(self, why: str, view: bytes, pos: int) -> NoReturn:
        self._keep(view, pos, 0)
        raise ProtocolError(why, view[pos : pos + QUOTE_BYTES])


# Outside a string only braces and quotes matter; inside one, quotes and backslashes.
_OUTSIDE = re.compile(rb'[{}"]')
_INSIDE = re.compile(rb'["\\]')
_SPACE = b" \t\r\n"

_RESPONSE_FIELDS = {
    "exitCode": "exit_code",
    "exit_code": "exit_code",
    "output": "output",
    "requestId": "request_id",
    "request_id": "request_id",
    "wasCancelled": "was_cancelled",
    "was_cancelled": "was_cancelled",
}


class JsonFraming(_Feeding):
    """JSON objects back to back, newline or not (Bazel 4.2.3 writes no newline)."""

    name = "json"

    def __init__(self, max_response_bytes: int | None = None) -> None:
        self._buffer = bytearray()
        #: The largest response taken: the executor's output budget, else the most a
        #: protobuf message can carry (the response is re-sent as one), so that a worker
        #: writing one string that never ends cannot take all of the runtime's memory.
        self._max = largest_taken(max_response_bytes)
        self._pos = 0  # scan position inside _buffer
        self._depth = 0
        self._in_string = False
        self._seen = bytearray()

    def encode(self, request: WorkRequest) -> bytes:
        obj: dict[str, Any] = {"arguments": list(request.arguments)}
        if request.inputs:
            obj["inputs"] = [
                {"path": i.path, "digest": base64.b64encode(i.digest).decode("ascii")}
                if i.digest
                else {"path": i.path}
                for i in request.inputs
            ]
        if request.request_id:
            obj["requestId"] = request.request_id
        if request.cancel:
            obj["cancel"] = True
        if request.verbosity:
            obj["verbosity"] = request.verbosity
        if request.sandbox_dir:
            obj["sandboxDir"] = request.sandbox_dir
        return json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n"

    def mid_message(self) -> bool:
        return self._depth > 0

    def _feed(self, data: bytes, out: list[WorkResponse]) -> None:
        if len(self._seen) < QUOTE_BYTES:
            self._seen += data[: QUOTE_BYTES - len(self._seen)]
        self._buffer += data
        while True:
            end = self._scan()
            if end is None:
                if len(self._buffer) > self._max:
                    self._fail(
                        f"its response passed {self._max} bytes, the most taken here, "
                        "before it ended"
                    )
                return
            if end > self._max:
                self._fail(f"its response of {end} bytes is more than the {self._max} taken here")
            raw = bytes(self._buffer[:end])
            del self._buffer[:end]
            self._pos = 0
            out.append(self._parse(raw))
            self._seen = bytearray(self._buffer[:QUOTE_BYTES])

    def _scan(self) -> int | None:
        """Advances the scanner; returns the end offset of a complete top-level object."""
        buf = self._buffer
        if self._depth == 0:
            # Skip white space between objects; anything else must open an object.
            pos = self._pos
            while pos < len(buf) and buf[pos] in _SPACE:
                pos += 1
            del buf[:pos]
            self._pos = 0
            if not buf:
                return None
            if buf[0] != ord("{"):
                self._fail("it does not start with '{'")
            self._depth = 1
            self._pos = 1
        while True:
            if self._in_string:
                match = _INSIDE.search(buf, self._pos)
                if match is None:
                    self._pos = len(buf)
                    return None
                if match.group() == b"\\":
                    if match.end() >= len(buf):
                        self._pos = match.start()  # wait for the escaped byte
                        return None
                    self._pos = match.end() + 1
                    continue
                self._in_string = False
                self._pos = match.end()
                continue
            match = _OUTSIDE.search(buf, self._pos)
            if match is None:
                self._pos = len(buf)
                return None
            self._pos = match.end()
            char = match.group()
            if char == b'"':
                self._in_string = True
            elif char == b"{":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return self._pos

    def _parse(self, raw: bytes) -> WorkResponse:
        try:
            # As pairs: a field written twice is refused (json.loads would keep the last
            # value: `{"exitCode":1,...,"exitCode":0}` read as a success), as Bazel does.
            pairs: list[tuple[str, Any]] = json.loads(raw, object_pairs_hook=_pairs)
        except json.JSONDecodeError as exc:
            self._seen = bytearray(raw[:QUOTE_BYTES])
            self._fail(f"it is not valid JSON ({exc})")
        except (ValueError, RecursionError) as exc:
            # Not UTF-8, an integer of more digits than Python converts (4,300), arrays
            # nested deeper than its recursion limit.
            self._seen = bytearray(raw[:QUOTE_BYTES])
            self._fail(f"it cannot be read as JSON ({exc})")
        values: dict[str, Any] = {}
        warnings: list[str] = []
        for name, value in pairs:
            target = _RESPONSE_FIELDS.get(name)
            if target is None:
                continue  # unknown fields are ignored, as the protocol says
            if target in values:
                self._fail(f"field {name} appears twice (or in both spellings)")
            if "_" in name and name != "output":
                warnings.append(f"the backend wrote snake_case {name!r}; Bazel would ignore it")
            values[target] = value
        # Read as Bazel's reader (Gson's, lenient) reads them: an integer may be quoted
        # or written as a whole float. Bazel never reads was_cancelled, so a quoted
        # boolean or null is taken there; a null integer or output Bazel refuses, and so
        # does this.
        for name in ("exit_code", "request_id"):
            written = values.get(name, 0)
            value = _as_int32(written)
            if value is None:
                self._fail(f"{name} is not an integer")
            if not INT32_MIN <= value <= INT32_MAX:
                shown = str(written)
                shown = shown if len(shown) <= _MAX_INTEGER_CHARS else f"{shown[:20]}..."
                self._fail(f"{name} {shown} is out of the int32 range")
            values[name] = value
        output = values.get("output", "")
        if not isinstance(output, str):
            self._fail("output is not a string")
        try:
            output.encode("utf-8")
        except UnicodeEncodeError:
            self._fail("output holds a lone surrogate escape, which is not text")
        cancelled = _as_bool(values.get("was_cancelled"))
        if cancelled is None:
            self._fail("was_cancelled is not a boolean")
        values["was_cancelled"] = cancelled
        return WorkResponse(**values, warnings=tuple(warnings))

    def first_bytes(self) -> bytes:
        return bytes(self._seen or self._buffer[:QUOTE_BYTES])

    def _fail(self, why: str) -> NoReturn:
        raise ProtocolError(why, self.first_bytes())


def _pairs(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """An object's members in order, each as written (json's object_pairs_hook)."""
    return pairs


_INTEGER = re.compile(r"-?[0-9]+")
#: A quoted integer of more digits than this (leading zeros aside) is out of the int32
#: range whatever it is (int() refuses past 4,300 digits with a ValueError of its own).
_MAX_INTEGER_CHARS = 24
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _as_int32(value: object) -> int | None:
    """An integer field's JSON value as Bazel's reader takes it (range checked by the
    caller), or None if it is not one (null among them): a number with no fraction, or
    one quoted."""
    if isinstance(value, str):
        if _INTEGER.fullmatch(value):
            negative = value[0] == "-"
            digits = value.lstrip("-").lstrip("0") or "0"
            if len(digits) > _MAX_INTEGER_CHARS:
                return INT32_MIN - 1 if negative else INT32_MAX + 1
            return -int(digits) if negative else int(digits)
        if not _NUMBER.fullmatch(value):  # float() would take " 1", "1_0", "inf"
            return None
        value = float(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_bool(value: object) -> bool | None:
    """was_cancelled's JSON value (which Bazel never reads): null (false), true, false,
    or either quoted; None if it is none of these."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}.get(value) if isinstance(value, str) else None


def make_framing(protocol: str, max_response_bytes: int | None = None) -> Framing:
    """Returns a fresh framing for one backend process: 'proto' or 'json'. A response
    larger than ``max_response_bytes`` (None: any plausible size) is a protocol error."""
    if protocol == "proto":
        return ProtoFraming(max_response_bytes)
    if protocol == "json":
        return JsonFraming(max_response_bytes)
    raise ValueError(f"unknown worker protocol {protocol!r}; expected 'proto' or 'json'")


def quote_bytes(data: bytes) -> str:
    """Shows bad backend output as text where it is text, and the rest as a hex dump."""
    text = data.decode("utf-8", "replace")
    printable = 0
    for char in text:
        if not (char.isprintable() or char in "\n\r\t") or char == "\ufffd":
            break
        printable += 1
    if printable == len(text):
        return repr(text)
    head = text[:printable]
    rest = data[len(head.encode("utf-8")) :]
    if len(head) < 4:
        return "hex " + data.hex(" ")
    return f"{head!r} then hex {rest.hex(' ')}"
