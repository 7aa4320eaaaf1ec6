"""The digests a local request carries (worker_runtime/execution/local.py): its envelope's
input digests and its worker key's tool digests, found on the event loop when none of it
can wait (known to the digest cache, or small files hashed at once), else read off it;
both ways give the same digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.file_clock import wait_until_settled
from worker_runtime.backends.manager import BackendManager
from worker_runtime.config import RuntimeConfig
from worker_runtime.envelope import Envelope, write_envelope
from worker_runtime.execution.local import LocalExecutor
from worker_runtime.execution.outcome import WorkRequest
from worker_runtime.execution.quick_reads import MAX_QUICK_DIGESTS, MAX_QUICK_HASH_BYTES


def executor(tmp_path: Path, *tools: str) -> LocalExecutor:
    config = RuntimeConfig(command=("tool",), tool_inputs=tools)
    return LocalExecutor(BackendManager(config, str(tmp_path), tmp_path / "logs"))


def action(tmp_path: Path, inputs: tuple[str, ...], size: int = 0) -> WorkRequest:
    for name in inputs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"content of {name}\n".ljust(size, "x"))
    write_envelope(tmp_path / "a.envelope.json", Envelope("a.args", inputs, ("out.jar",)))
    return WorkRequest(("compile",), envelope="a.envelope.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_small_files_are_hashed_on_the_loop_and_then_known(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "worker.jar").write_text("v1")
    local = executor(tmp_path, "tools/worker.jar")
    request = action(tmp_path, ("src/A.java", "lib/b.jar"))
    wait_until_settled(tmp_path / "tools" / "worker.jar", tmp_path / "src" / "A.java")
    wait_until_settled(tmp_path / "lib" / "b.jar")
    quick = local.quick_digests(request)
    assert quick is not None
    inputs, tools = quick
    assert [(i.path, i.digest.decode()) for i in inputs] == [
        ("src/A.java", sha256(tmp_path / "src" / "A.java")),
        ("lib/b.jar", sha256(tmp_path / "lib" / "b.jar")),
    ]
    assert tools == (("tools/worker.jar", sha256(tmp_path / "tools" / "worker.jar")),)
    assert local.manager.digests.files_hashed == 3
    assert local.quick_digests(request) == quick == local.digests(request)
    assert local.manager.digests.files_hashed == 3  # nothing read again


def test_an_edited_input_or_tool_is_seen_by_the_next_request(tmp_path: Path) -> None:
    (tmp_path / "worker.jar").write_text("v1")
    local = executor(tmp_path, "worker.jar")
    request = action(tmp_path, ("src/A.java",))
    first = local.quick_digests(request)
    assert first is not None
    (tmp_path / "src" / "A.java").write_text("class A { int edited; }\n")
    second = local.quick_digests(request)
    assert second is not None
    assert second[0][0].digest.decode() == sha256(tmp_path / "src" / "A.java")
    assert second[1] == first[1]
    (tmp_path / "worker.jar").write_text("v2, rebuilt")
    third = local.quick_digests(request)
    assert third is not None and third[1] == (("worker.jar", sha256(tmp_path / "worker.jar")),)
    assert third == local.digests(request)


def test_more_to_hash_than_the_budget_goes_off_the_loop(tmp_path: Path) -> None:
    local = executor(tmp_path)
    half = MAX_QUICK_HASH_BYTES // 2 + 1
    request = action(tmp_path, ("A.java", "B.java"), size=half)  # each fits, not both
    wait_until_settled(tmp_path / "A.java", tmp_path / "B.java")
    hashed = local.manager.digests.files_hashed
    assert local.quick_digests(request) is None
    read = local.digests(request)
    assert len(read[0]) == 2
    assert local.quick_digests(request) == read  # both known now
    assert local.manager.digests.files_hashed == hashed + 2


def test_what_the_slow_path_reports_is_left_to_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = executor(tmp_path, "absent.jar")
    assert local.quick_digests(WorkRequest(("x",))) is None  # the slow path names absent.jar
    local = executor(tmp_path)
    (tmp_path / "bad.json").write_text("{")
    bad = WorkRequest(("x",), envelope="bad.json")
    assert local.quick_digests(bad) is None
    assert local.digests(bad) == ((), ())
    assert "request sent without input digests" in caplog.text and "bad.json" in caplog.text


def test_a_request_without_envelope_or_tools_reads_nothing(tmp_path: Path) -> None:
    assert executor(tmp_path).quick_digests(WorkRequest(("x",))) == ((), ())


def test_many_inputs_are_digested_off_the_loop(tmp_path: Path) -> None:
    local = executor(tmp_path)
    names = tuple(f"src/F{i}.java" for i in range(MAX_QUICK_DIGESTS + 1))
    request = action(tmp_path, names)
    assert len(local.digests(request)[0]) == len(names)
    assert local.quick_digests(request) is None  # all known, but too many looks for the loop
    write_envelope(tmp_path / "b.json", Envelope("b.args", names[:MAX_QUICK_DIGESTS], ()))
    fewer = WorkRequest(("compile",), envelope="b.json")
    assert local.quick_digests(fewer) == local.digests(fewer)


def test_auto_counts_local_slots_by_the_key_env_values_and_the_backend_s_kind(
    tmp_path: Path,
) -> None:
    """Not by the whole worker key: its tool digests are read as the first request runs,
    so the first request's key (before) was not the next one's (after), and the second
    request of a burst found a free slot."""
    manager = BackendManager(
        RuntimeConfig(command=("w",), max_instances=3), str(tmp_path), tmp_path / "logs"
    )
    request = WorkRequest(("x",), key_env=(("JAVA_HOME", "/jdk"),))
    assert LocalExecutor(manager).capacity(request) == ((("JAVA_HOME", "/jdk"),), 3)
    multiplex = BackendManager(
        RuntimeConfig(command=("w",), multiplex=True), str(tmp_path), tmp_path / "logs"
    )
    assert LocalExecutor(multiplex).capacity(request)[1] is None
