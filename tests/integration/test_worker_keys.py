"""Worker keys: tool inputs and the per-request environment decide which backend serves."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import StartRuntime, fake_backend, wait_gone
from worker_runtime.envelope import ENVELOPE_ENV, Envelope, write_envelope
from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE
from workers_dev.emulator import make_command


def test_changed_tool_input_gets_a_new_backend_and_retires_the_old(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    tool = tmp_path / "tool.jar"
    tool.write_text("version 1")
    worker = start_runtime(fake_backend(), ["--tool-input", str(tool)])
    old = worker.run("pid").stderr
    assert worker.run("pid").stderr == old
    tool.write_text("version 2, rebuilt")
    new = worker.run("pid").stderr
    assert new != old
    assert worker.run("pid").stderr == new
    assert wait_gone([int(old)]) == [], "the old backend should be retired when idle"


def test_an_edited_tool_input_beneath_the_project_is_seen_at_once(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """A tool input named relative to the project (as the prelude names them) has its
    digest found on the event loop once hashed; an edit is still seen by the next request,
    and so is an edited input the envelope names."""
    (tmp_path / "tools").mkdir()
    tool = tmp_path / "tools" / "worker.jar"
    tool.write_text("version 1")
    (tmp_path / "A.java").write_text("class A {}")
    write_envelope(tmp_path / "a.envelope.json", Envelope("a.args", ("A.java",), ()))
    worker = start_runtime(fake_backend(), ["--tool-input", "tools/worker.jar"], cwd=tmp_path)
    env = {ENVELOPE_ENV: "a.envelope.json"}
    old = worker.execute(make_command(["pid"], env=env)).stderr
    for _ in range(3):
        assert worker.execute(make_command(["pid"], env=env)).stderr == old
    digest = hashlib.sha256(b"class A {}").hexdigest()
    assert worker.execute(make_command(["inputs"], env=env)).stderr == f"A.java={digest}"
    (tmp_path / "A.java").write_text("class A { int edited; }")
    digest = hashlib.sha256(b"class A { int edited; }").hexdigest()
    assert worker.execute(make_command(["inputs"], env=env)).stderr == f"A.java={digest}"
    assert worker.execute(make_command(["pid"], env=env)).stderr == old  # not in the key
    tool.write_text("version 2, rebuilt")
    new = worker.execute(make_command(["pid"], env=env)).stderr
    assert new != old
    assert worker.execute(make_command(["pid"], env=env)).stderr == new
    assert wait_gone([int(old)]) == [], "the old backend should be retired when idle"


def test_missing_tool_input_is_a_clear_per_request_error(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    worker = start_runtime(fake_backend(), ["--tool-input", str(tmp_path / "absent.jar")])
    response = worker.run("pid")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "absent.jar" in response.stderr and "cannot be read" in response.stderr


def test_key_env_values_pick_backends_and_reach_them(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend(), ["--key-env", "JAVA_HOME"])
    a = worker.execute(make_command(["env", "JAVA_HOME"], env={"JAVA_HOME": "/jdk/a"}))
    b = worker.execute(make_command(["env", "JAVA_HOME"], env={"JAVA_HOME": "/jdk/b"}))
    assert (a.stderr, b.stderr) == ("/jdk/a", "/jdk/b")
    pid_a = worker.execute(make_command(["pid"], env={"JAVA_HOME": "/jdk/a"})).stderr
    pid_b = worker.execute(make_command(["pid"], env={"JAVA_HOME": "/jdk/b"})).stderr
    assert pid_a != pid_b
    assert worker.execute(make_command(["pid"], env={"JAVA_HOME": "/jdk/a"})).stderr == pid_a


def test_other_request_env_is_ignored(start_runtime: StartRuntime) -> None:
    """TMPDIR and the like differ per action; they must not start new backends."""
    worker = start_runtime(fake_backend())
    first = worker.execute(make_command(["pid"], scratch="/tmp/action-1")).stderr
    second = worker.execute(make_command(["pid"], scratch="/tmp/action-2")).stderr
    assert first == second
    seen = worker.execute(
        make_command(["env", "BUCK_SCRATCH_PATH"], scratch="/tmp/action-3")
    ).stderr
    assert seen != "/tmp/action-3"
