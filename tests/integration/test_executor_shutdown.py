"""An executor told to stop (SIGTERM) lets what runs finish for up to its
`--shutdown-grace`; past it, the actions still running are stopped (their process groups
killed), their leases handed back to the server, and the executor exits; one that
finished as it was stopped is reported, not run again. It never waits out an action's
own timeout. Needs what tests/integration/test_cluster.py needs."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.clusters import private_cluster
from tests.conftest import REPO_ROOT
from tests.in_process_executor import in_process_executor, oneshot_outcome, runs_until
from tests.integration.test_remote import start_execute
from worker_runtime.cluster import buildgrid
from worker_runtime.cluster.commands import tenant_arguments
from worker_runtime.cluster.layout import ClusterLayout
from worker_runtime.executor import bots
from worker_runtime.executor.runner import ActionCancelled, LeaseStop
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto.google.longrunning import operations_pb2

# Bringing PostgreSQL and BuildGrid up is part of the test's time.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster_dir() -> Iterator[Path]:
    with private_cluster("--executors", "0") as directory:
        yield directory


def processes_naming(token: str) -> list[int]:
    """The pids whose command line holds ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until(check: Callable[[], object], what: str, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}; the executor's log:\n{log.read_text()}"
        time.sleep(0.05)


def test_past_the_shutdown_grace_running_actions_are_stopped_and_the_executor_exits(
    tmp_path: Path, cluster_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = ClusterLayout(cluster_dir)
    socket = f"unix://{cluster_dir}/run/buildgrid.sock"
    log = tmp_path / "executor.log"
    with open(log, "ab") as out:
        executor = subprocess.Popen(
            [sys.executable, "-m", "worker_runtime", "executor", "--server", socket,
             "--instance", "main", "--bot-id", "grace-test", "--capacity", "1",
             "--workdir", str(cluster_dir / "grace-executor"), "--shutdown-grace", "1",
             *tenant_arguments(layout)],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    token = uuid.uuid4().hex
    try:
        with grpc.insecure_channel(socket) as channel:
            # The shell stays (its command line names the token) while its child sleeps
            # far past the test: only a stop by the executor ends it in time.
            command = re_pb2.Command(
                arguments=["/bin/sh", "-c", f"sleep 600; : {token}"], output_paths=["out"]
            )
            stream = start_execute(channel, re_pb2.Directory(), command, timeout_s=240)
            seen: list[operations_pb2.Operation] = []

            def read() -> None:
                with contextlib.suppress(grpc.RpcError):  # cancelled at the end
                    seen.extend(stream)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            wait_until(lambda: processes_naming(token), "the action never started", log)
            executor.send_signal(signal.SIGTERM)
            try:
                code = executor.wait(timeout=60)  # the action alone would take 600 s
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"the executor still runs past its grace:\n{log.read_text()}"
                ) from None
            assert code == 0, log.read_text()
            wait_until(lambda: not processes_naming(token), "the action outlived its executor", log)
            text = log.read_text()
            assert "shutdown grace of 1 s over with 1 lease running: stopping it" in text
            # Stopped by the executor itself (its process group killed at once), not left
            # to run until the executor's exit tears its control group down (which only
            # an executor with groups has: as root, or with --limit-*).
            assert "cancelled: cancelled while running" in text
            # The lease went back to the server, not failed: its operation still waits
            # for a bot, and the next one runs it (handed back as COMPLETED with
            # UNAVAILABLE, which BuildGrid requeues; not as PENDING, which it ignored).
            assert reader.is_alive()
            assert seen and not any(operation.done for operation in seen)
            ran_again = threading.Event()
            with in_process_executor(
                monkeypatch, runs_until(ran_again, ran_again, 0, b"ran again"), socket,
                cluster_dir / "second-grace-executor",
            ) as other:  # fmt: skip
                reader.join(120)
                assert other.stop_and_wait() == 0
            assert not reader.is_alive(), "the handed-back lease never ran again"
            done = [operation for operation in seen if operation.done]
            response = re_pb2.ExecuteResponse()
            assert done and done[-1].response.Unpack(response), seen[-1]
            assert response.status.code == 0 and response.result.stdout_raw == b"ran again"
            assert "stopped before the action finished" not in str(response)
    finally:
        if executor.poll() is None:
            buildgrid.stop(executor.pid)
            executor.wait()


def test_an_action_that_finishes_as_the_grace_runs_out_is_reported_not_run_again(
    tmp_path: Path, cluster_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executor's own loop against the real BuildGrid, its runner replaced by one
    whose action ends only once the stop reaches it, with a result: the last moment an
    action can finish. That result is the lease's, reported to the server before the bot
    says it terminates; the lease is not handed back to run again."""
    socket = f"unix://{cluster_dir}/run/buildgrid.sock"
    started = threading.Event()
    finishes_when_stopped = runs_until(started, None, 7, b"finished as it was stopped")
    with (
        in_process_executor(
            monkeypatch, finishes_when_stopped, socket, cluster_dir / "last-moment-executor",
            shutdown_grace_s=0.5,
        ) as running,
        grpc.insecure_channel(socket) as channel,
    ):  # fmt: skip
        command = re_pb2.Command(arguments=["/bin/true", uuid.uuid4().hex])
        stream = start_execute(channel, re_pb2.Directory(), command, timeout_s=60)
        assert started.wait(60), "the executor never started the action"
        assert running.stop_and_wait() == 0, "the executor still runs past its grace"
        try:
            last = list(stream)[-1]  # the stream ends with the operation done
        except grpc.RpcError as exc:  # still waiting for a bot at the deadline
            raise AssertionError(f"the lease went back: {exc.code()}") from None
        assert last.done
        response = re_pb2.ExecuteResponse()
        assert last.response.Unpack(response)
        assert response.status.code == 0, response.status
        assert response.result.exit_code == 7
        assert response.result.stdout_raw == b"finished as it was stopped"


def test_an_action_still_taking_its_outputs_past_the_grace_is_told_they_are_unwanted(
    tmp_path: Path, cluster_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grace's stop lets an action whose process finished as it came read and
    upload its outputs (reported, not run again); one still at it once the stopped
    actions were waited for is handed back, and went on uploading, for nobody, holding
    the executor's exit. Its lease's stop says now that its result is unwanted."""
    socket = f"unix://{cluster_dir}/run/buildgrid.sock"
    started, told = threading.Event(), threading.Event()

    def run(
        runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
    ) -> bots.ActionOutcome:
        started.set()
        assert cancelled.wait(120), "never stopped"
        assert isinstance(cancelled, LeaseStop) and cancelled.result_wanted
        deadline = time.monotonic() + 120  # "uploading" until told its result is unwanted
        while cancelled.result_wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        if not cancelled.result_wanted:
            told.set()
        raise ActionCancelled("cancelled while its outputs were uploaded")

    monkeypatch.setattr(bots, "STOPPED_ACTIONS_WAIT_S", 0.5)
    with (
        in_process_executor(
            monkeypatch, run, socket, cluster_dir / "uploading-executor", shutdown_grace_s=0.5
        ) as running,
        grpc.insecure_channel(socket) as channel,
    ):  # fmt: skip
        command = re_pb2.Command(arguments=["/bin/true", uuid.uuid4().hex])
        stream = start_execute(channel, re_pb2.Directory(), command, timeout_s=120)
        assert started.wait(60), "the executor never started the action"
        assert running.stop_and_wait() == 0, "the executor still runs past its grace"
        assert told.wait(30), "the action was never told its result is unwanted"
        # Handed back, it runs again on the next bot (and leaves no job queued for the
        # module's other tests' executors).
        ran_again = threading.Event()
        with in_process_executor(
            monkeypatch, runs_until(ran_again, ran_again, 0, b"ran again"), socket,
            cluster_dir / "after-uploading-executor",
        ) as other:  # fmt: skip
            last = list(stream)[-1]
            assert other.stop_and_wait() == 0
        response = re_pb2.ExecuteResponse()
        assert last.done and last.response.Unpack(response)
        assert response.result.stdout_raw == b"ran again"


def test_a_draining_executor_takes_no_new_lease(
    tmp_path: Path, cluster_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An executor told to stop, with room for another lease, is not given one while it
    waits for what it runs: an action sent meanwhile goes to another bot at once, rather
    than waiting in the draining bot until it exits (or, past its grace, is handed back)."""
    socket = f"unix://{cluster_dir}/run/buildgrid.sock"
    first_started, release_first = threading.Event(), threading.Event()
    calls: list[str] = []

    def run(
        runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
    ) -> bots.ActionOutcome:
        calls.append(action.command_digest.hash)
        if len(calls) == 1:  # the first action runs until the test lets it end
            first_started.set()
            while not (release_first.wait(0.05) or cancelled.is_set()):
                pass
        return oneshot_outcome(0, b"ran")

    with (
        in_process_executor(
            monkeypatch, run, socket, cluster_dir / "draining-executor", capacity=2
        ) as draining,
        grpc.insecure_channel(socket) as channel,
    ):  # fmt: skip
        first = start_execute(channel, re_pb2.Directory(), unique_true(), timeout_s=120)
        assert first_started.wait(60), "the executor never started the first action"
        draining.executor.stop()  # SIGTERM's effect; it waits for the first action
        time.sleep(1)  # its next updates say it takes nothing more
        # Its deadline is far inside the draining bot's grace (30 s): were the second
        # action given to it, the stream would end DEADLINE_EXCEEDED.
        second = start_execute(channel, re_pb2.Directory(), unique_true(), timeout_s=20)
        time.sleep(1.5)  # time for the server to give the second to the draining bot
        with in_process_executor(
            monkeypatch, run, socket, cluster_dir / "second-executor"
        ) as other:
            try:
                done = [operation for operation in second if operation.done]
            finally:
                release_first.set()
            assert done, "the second action never finished"
            assert other.stop_and_wait() == 0
        draining.loop.join(30)
        assert not draining.loop.is_alive() and draining.exit_codes == [0]
        assert [operation.done for operation in first][-1]
    assert len(calls) == 2  # each ran once


def unique_true() -> re_pb2.Command:
    return re_pb2.Command(arguments=["/bin/true", uuid.uuid4().hex])
