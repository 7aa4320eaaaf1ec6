"""The worker_run envelope: read, and every malformed form rejected with what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker_runtime.envelope import Envelope, envelope_json, read_envelope, write_envelope
from worker_runtime.errors import RequestError


def write(tmp_path: Path, content: object) -> str:
    (tmp_path / "e.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return "e.json"


def test_reads_the_prelude_s_envelope(tmp_path: Path) -> None:
    path = write(tmp_path, {"argfile": "a.args", "inputs": ["x"], "outputs": ["y"], "version": 1})
    assert read_envelope(path, str(tmp_path)) == Envelope("a.args", ("x",), ("y",))


def test_the_writer_writes_what_the_reader_reads(tmp_path: Path) -> None:
    envelope = Envelope("a b.args", ("src/x.java", "deps/ü.jar"), ("out/x.class",))
    write_envelope(tmp_path / "e.json", envelope)
    assert read_envelope("e.json", str(tmp_path)) == envelope
    assert json.loads(envelope_json(envelope)) == {
        "argfile": "a b.args",
        "inputs": ["src/x.java", "deps/ü.jar"],
        "outputs": ["out/x.class"],
        "version": 1,
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("[" * 100_000, "not valid JSON: maximum recursion depth"),
        ('{"version": ' + "9" * 5000 + "}", "not valid JSON: Exceeds the limit"),
        ([], "not a JSON object"),
        ({"argfile": "a", "inputs": [], "outputs": [], "version": 2}, "has version 2"),
        ({"inputs": [], "outputs": [], "version": 1}, "no `argfile`"),
        ({"argfile": "a", "inputs": "x", "outputs": [], "version": 1}, "`inputs`"),
        ({"argfile": "a", "inputs": [], "outputs": [1], "version": 1}, "`outputs`"),
        ({"argfile": "a", "inputs": ["x\0y"], "outputs": [], "version": 1}, "NUL"),
        ({"argfile": "a\0", "inputs": [], "outputs": [], "version": 1}, "in `argfile`: no"),
        # A \u escape of a lone surrogate: no file name, and no WorkRequest can carry it
        ({"argfile": "a", "inputs": ["\ud800.java"], "outputs": [], "version": 1}, "not valid Uni"),
        ({"argfile": "\udcff", "inputs": [], "outputs": [], "version": 1}, "in `argfile`, which"),
    ],
)
def test_malformed_envelopes_are_rejected(tmp_path: Path, content: object, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        read_envelope(write(tmp_path, content), str(tmp_path))


def test_an_envelope_name_with_a_nul_is_a_request_error(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="holds a NUL, which no file name can"):
        read_envelope("e\0.json", str(tmp_path))


def test_a_missing_envelope_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match=r"cannot read the envelope .*/nope\.json"):
        read_envelope("nope.json", str(tmp_path))
