"""The digests a local request carries (worker_runtime/execution/local.py): its envelope's
input digests and its worker key's tool digests, found on the event loop when the digest
cache holds them all, else read off it; both ways give the same digests."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker_runtime.backends.manager import BackendManager
from worker_runtime.config import RuntimeConfig
from worker_runtime.envelope import Envelope, write_envelope
from worker_runtime.execution.local import LocalExecutor
from worker_runtime.execution.outcome import WorkRequest
from worker_runtime.execution.quick_reads import MAX_QUICK_DIGESTS


def executor(tmp_path: Path, *tools: str) -> LocalExecutor:
    config = RuntimeConfig(command=("tool",), tool_inputs=tools)
    return LocalExecutor(BackendManager(config, str(tmp_path), tmp_path / "logs"))


def action(tmp_path: Path, inputs: tuple[str, ...]) -> WorkRequest:
    for name in inputs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"content of {name}\n")
    write_envelope(tmp_path / "a.envelope.json", Envelope("a.args", inputs, ("out.jar",)))
    return WorkRequest(("compile",), envelope="a.envelope.json")


def test_digests_read_once_are_then_found_on_the_loop(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "worker.jar").write_text("v1")
    local = executor(tmp_path, "tools/worker.jar")
    request = action(tmp_path, ("src/A.java", "lib/b.jar"))
    assert local.known_digests(request) is None  # nothing hashed yet
    read = local.digests(request)
    inputs, tools = read
    assert [i.path for i in inputs] == ["src/A.java", "lib/b.jar"]
    assert [path for path, _ in tools] == ["tools/worker.jar"]
    hashed = local.manager.digests.files_hashed
    assert local.known_digests(request) == read
    assert local.manager.digests.files_hashed == hashed  # nothing read again
    assert local.manager.tools.last == tools


def test_an_edited_input_or_tool_is_read_again(tmp_path: Path) -> None:
    (tmp_path / "worker.jar").write_text("v1")
    local = executor(tmp_path, "worker.jar")
    request = action(tmp_path, ("src/A.java",))
    first = local.digests(request)
    (tmp_path / "src" / "A.java").write_text("class A { int edited; }\n")
    assert local.known_digests(request) is None
    second = local.digests(request)
    assert second[0] != first[0] and second[1] == first[1]
    (tmp_path / "worker.jar").write_text("v2, rebuilt")
    assert local.known_digests(request) is None
    assert local.digests(request)[1] != first[1]


def test_what_the_slow_path_reports_is_left_to_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = executor(tmp_path, "absent.jar")
    assert local.known_digests(WorkRequest(("x",))) is None  # the slow path names absent.jar
    local = executor(tmp_path)
    (tmp_path / "bad.json").write_text("{")
    bad = WorkRequest(("x",), envelope="bad.json")
    assert local.known_digests(bad) is None
    assert local.digests(bad) == ((), ())
    assert "request sent without input digests" in caplog.text and "bad.json" in caplog.text


def test_a_request_without_envelope_or_tools_reads_nothing(tmp_path: Path) -> None:
    assert executor(tmp_path).known_digests(WorkRequest(("x",))) == ((), ())


def test_many_inputs_are_digested_off_the_loop(tmp_path: Path) -> None:
    local = executor(tmp_path)
    names = tuple(f"src/F{i}.java" for i in range(MAX_QUICK_DIGESTS + 1))
    request = action(tmp_path, names)
    assert len(local.digests(request)[0]) == len(names)
    assert local.known_digests(request) is None  # all known, but too many stats for the loop
    write_envelope(tmp_path / "b.json", Envelope("b.args", names[:MAX_QUICK_DIGESTS], ()))
    fewer = WorkRequest(("compile",), envelope="b.json")
    assert local.known_digests(fewer) == local.digests(fewer)
