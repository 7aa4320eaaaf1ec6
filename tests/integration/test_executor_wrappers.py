"""What runs in front of an action's program on the executor (the control group's join,
the sandbox, the uid switch) and fails before the program starts is the executor's fault:
the lease fails INTERNAL, which the server retries, saying what the wrapper said. It was
reported as the action's own exit status (bwrap's 1, the join's 125): a result, cached
and never retried. The action's own statuses still pass through the wrappers unchanged.
Run through the real ActionRunner as root, with real cgroups, bubblewrap and setpriv."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_executor_action_faults import StoredBlobs, action_of, runner_on
from worker_runtime.executor.limits import Confinement, Group, Limits
from worker_runtime.executor.runner import INTERNAL, ActionNotRun
from worker_runtime.executor.sandbox import Sandbox
from worker_runtime.executor.tenants import RunAs
from worker_runtime.proto import remote_execution_pb2 as re_pb2

pytestmark = pytest.mark.needs_root("it makes control groups and switches uids")
TENANT = RunAs(200009, 200009)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """The executor's directory, which the tenant passes through (not pytest's 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="wr-wrappers-"))
    directory.chmod(0o711)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def confinement() -> Iterator[Confinement]:
    made = Confinement(Limits(pids=32), f"test-wrappers-{threading.get_native_id()}")
    yield made
    made.clear()


def run(
    workdir: Path, script: str, confinement: Confinement, sandbox: Sandbox | None
) -> re_pb2.ActionResult:
    store = StoredBlobs()
    runner = runner_on(store, workdir, run_as=TENANT, sandbox=sandbox, confinement=confinement)
    try:
        return runner.run(action_of(store, script, [], {}), "main", threading.Event()).result
    finally:
        runner.pool.stop_all()


@pytest.mark.parametrize("sandboxed", [False, True], ids=["uid switch", "sandbox"])
def test_the_actions_own_statuses_pass_through_the_wrappers(
    workdir: Path, confinement: Confinement, sandboxed: bool
) -> None:
    sandbox = Sandbox.find() if sandboxed else None
    for status in (0, 1, 125, 126, 127):
        result = run(workdir, f"echo ran >&2; exit {status}", confinement, sandbox)
        assert (result.exit_code, result.stderr_raw) == (status, b"ran\n")
    assert run(workdir, "kill -9 $$", confinement, sandbox).exit_code == 128 + 9


def test_a_control_group_that_cannot_be_joined_is_the_executors_fault(
    workdir: Path, confinement: Confinement, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = confinement.group

    def removed(name: str) -> Group:  # gone before the join: the join's `echo` fails
        group = made(name)
        for directory in group.directories:
            directory.rmdir()
        return group

    monkeypatch.setattr(confinement, "group", removed)
    with pytest.raises(ActionNotRun) as failed:
        run(workdir, "echo ran; exit 0", confinement, None)
    assert failed.value.code == INTERNAL
    message = str(failed.value)
    assert "could not start the action" in message and "status 125" in message
    assert "cgroup.procs" in message, message  # what the join said


def test_a_sandbox_that_cannot_be_set_up_is_the_executors_fault(
    workdir: Path, confinement: Confinement
) -> None:
    vanishing = Path(tempfile.mkdtemp(prefix="wr-vanishing-"))
    sandbox = Sandbox.find(read_only=[str(vanishing)])
    vanishing.rmdir()  # the operator's read-only path, gone since the executor started
    with pytest.raises(ActionNotRun) as failed:
        run(workdir, "echo ran; exit 0", confinement, sandbox)
    assert failed.value.code == INTERNAL
    message = str(failed.value)
    assert "could not start the action" in message and "status 1 " in message
    assert "bwrap" in message and str(vanishing) in message, message
