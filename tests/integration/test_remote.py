"""Remote persistent workers end to end: the runtime (as Buck2 drives it, routing
`remote`) forwards requests through BuildGrid to our executor, which runs them on
persistent workers keyed by what it received, and the outputs come back into place."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.clusters import cluster, executor_metrics, private_cluster
from tests.conftest import REPO_ROOT, RUNTIME, is_gone, wait_gone
from tests.integration.test_reapi_wire import serialized, upload
from tests.unix_proxy import UnixProxy
from tests.worker_identity import host_pid, live_host_pids, reported
from worker_runtime.envelope import Envelope, write_envelope
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto import remote_execution_pb2_grpc as re_grpc
from worker_runtime.proto.buck2_worker_pb2 import ExecuteResponse
from worker_runtime.proto.google.rpc import error_details_pb2
from workers_dev.emulator import Buck2Worker, make_command

#: Above the 120 s default: the engine's `cluster up` (up to 180 s) runs in the first
#: test's time; the suite's time guard, not a measure.
pytestmark = pytest.mark.timeout(600)

TEST_WORKER = REPO_ROOT / "tests" / "backends" / "remote_test_worker.py"


@pytest.fixture(scope="module")
def engine() -> Iterator[Path]:
    """BuildGrid with two executors for instance main and one for tenant-b."""
    with private_cluster("--executors", "3") as directory:
        yield directory


@pytest.fixture
def disrupted_engine(engine: Path) -> Iterator[Path]:
    """The engine, for a test that kills or stops part of it: brought back whole after
    the test however it ended, so that a failure here never shows up as a later test's."""
    yield engine
    back = cluster("up", "--executors", "3", "--dir", str(engine))
    assert back.returncode == 0, f"the engine could not be restored: {back.stderr}"


@pytest.fixture
def signals() -> Iterator[Path]:
    """Where a test leaves the file a remote action waits for: a directory its tenant's
    uid can see into (pytest's tmp_path is root's and 0700, and the executor runs each
    tenant as a uid of its own), and its sandbox shows (this checkout, read-only)."""
    (REPO_ROOT / ".cache").mkdir(exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="test-signals-", dir=REPO_ROOT / ".cache"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def project(tmp_path: Path, engine: Path, instance: str = "main") -> Path:
    root = tmp_path / "project"
    (root / "tools").mkdir(parents=True)
    shutil.copy(TEST_WORKER, root / "tools" / "worker.py")
    (root / "src").mkdir()
    (root / "src" / "a.txt").write_text("alpha\n")
    config = {
        "command": ["python3", "tools/worker.py"],
        "protocol": "json",
        "tool_inputs": ["tools/worker.py"],
        "routing": "remote",
        "remote": {"endpoint": f"unix://{engine}/run/buildgrid.sock", "instance_name": instance},
        "daemon": False,
    }
    (root / "worker.json").write_text(json.dumps(config))
    return root


def action(
    root: Path, name: str, args: list[str], inputs: list[str], outputs: list[str]
) -> dict[str, str]:
    """What worker_run writes for one action: the @argfile and the envelope."""
    (root / f"{name}.args").write_text("\n".join(args) + "\n")
    envelope = Envelope(f"{name}.args", tuple(inputs), tuple(outputs))
    write_envelope(root / f"{name}.envelope.json", envelope)
    return {"WORKER_RUNTIME_ENVELOPE": f"{name}.envelope.json"}


def in_background(
    worker: Buck2Worker, argfile: str, env: dict[str, str], timeout_s: int | None = None
) -> Future[ExecuteResponse]:
    """Sends ``@argfile`` on a thread of its own; the future holds the response."""
    future: Future[ExecuteResponse] = Future()
    command = make_command([f"@{argfile}"], env=env, timeout_s=timeout_s)

    def send() -> None:
        try:
            future.set_result(worker.execute(command))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=send, daemon=True).start()
    return future


def copy_action(root: Path, name: str, *before: str) -> dict[str, str]:
    """An action whose worker writes src/a.txt and its PID to out/NAME.txt, after the
    options ``before`` (holds such as --wait-if, --sleep-if)."""
    return action(
        root,
        name,
        [*before, "--out", f"out/{name}.txt", "src/a.txt"],
        ["src/a.txt"],
        [f"out/{name}.txt"],
    )


def runtime(root: Path) -> Buck2Worker:
    return Buck2Worker(
        [*RUNTIME, "serve", "--config", str(root / "worker.json")], project_root=root
    )


def running_action(engine: Path, earlier: set[Path]) -> tuple[int, str]:
    """(executor PID, worker identity) of the slow action that has just started remotely: the
    test worker writes started.txt into its action directory (``earlier`` ones are a
    killed executor's leftovers)."""
    deadline = time.monotonic() + 30
    started: list[Path] = []
    while not started and time.monotonic() < deadline:
        started = [p for p in engine.glob("executors/*/actions/*/started.txt") if p not in earlier]
        time.sleep(0.02)
    assert started, "the action never started"
    index = int(started[0].parts[-4].split("-")[1])  # executors/executor-<i>-<instance>/...
    executor = json.loads((engine / "state.json").read_text())["executor_pids"][index]
    return int(executor), wait_for_text(started[0])


def metric(engine: Path, name: str) -> float:
    """The sum of one metric (a sample line's name with its labels) over the cluster's
    executors, read from their Prometheus endpoints."""
    state = json.loads((engine / "state.json").read_text())
    return sum(
        executor_metrics(f"http://127.0.0.1:{port}/metrics").get(name, 0.0)
        for port in state["executor_metrics_ports"]
    )


def test_executor_metrics_count_leases_latencies_and_outcomes(tmp_path: Path, engine: Path) -> None:
    names = (
        "executor_leases_total",
        'executor_actions_total{outcome="success"}',
        "executor_queue_seconds_count",
        "executor_execution_seconds_count",
    )
    before = {name: metric(engine, name) for name in names}
    root = project(tmp_path, engine)
    (root / "src" / "a.txt").write_text(f"metrics {tmp_path}\n")
    with runtime(root) as worker:
        env = copy_action(root, "mt")
        response = worker.execute(make_command(["@mt.args"], env=env))
    assert response.exit_code == 0, response.stderr
    for name in names:
        assert metric(engine, name) == before[name] + 1, name


def test_requests_with_the_same_key_run_on_the_same_remote_worker(
    tmp_path: Path, engine: Path
) -> None:
    root = project(tmp_path, engine)
    with runtime(root) as worker:
        pids = []
        for i in range(2):
            env = action(
                root,
                f"r{i}",
                ["--out", f"out/r{i}.txt", "src/a.txt"],
                ["src/a.txt"],
                [f"out/r{i}.txt"],
            )
            response = worker.execute(make_command([f"@r{i}.args"], env=env))
            assert response.exit_code == 0, response.stderr
            assert response.stderr == f"wrote out/r{i}.txt\n"
            text = (root / "out" / f"r{i}.txt").read_text()
            assert text.startswith("alpha\npid=")
            pids.append(reported(text))
        assert pids[0] == pids[1]  # one warm worker process served both
        assert host_pid(pids[0]) != os.getpid()
        # Other tool files: never the same worker.
        (root / "tools" / "worker.py").write_text(
            (root / "tools" / "worker.py").read_text() + "\n# v2\n"
        )
        env = copy_action(root, "r2")
        response = worker.execute(make_command(["@r2.args"], env=env))
        assert response.exit_code == 0, response.stderr
        assert reported((root / "out" / "r2.txt").read_text()) != pids[0]


def test_a_cached_action_is_not_run_again(tmp_path: Path, engine: Path) -> None:
    root = project(tmp_path, engine)
    (root / "src" / "a.txt").write_text(f"unique {tmp_path}\n")
    with runtime(root) as worker:
        env = copy_action(root, "c")
        first = worker.execute(make_command(["@c.args"], env=env))
        assert first.exit_code == 0, first.stderr
        written = (root / "out" / "c.txt").read_text()
        (root / "out" / "c.txt").unlink()
        second = worker.execute(make_command(["@c.args"], env=env))
        assert second.exit_code == 0, second.stderr
        assert (root / "out" / "c.txt").read_text() == written  # from the action cache


def test_a_worker_writing_outside_its_directory_gets_nothing_back(
    tmp_path: Path, engine: Path
) -> None:
    root = project(tmp_path, engine)
    outside = Path(tempfile.gettempdir()) / f"escape-{os.getpid()}.txt"
    with runtime(root) as worker:
        env = action(root, "e", ["--escape", str(outside)], [], ["out/e.txt"])
        response = worker.execute(make_command(["@e.args"], env=env))
    escaped = outside.exists()
    outside.unlink(missing_ok=True)
    assert response.exit_code == 0  # the process could write there ...
    assert not (root / "out" / "e.txt").exists()  # ... but nothing outside comes back
    # As root the executors are sandboxed: the write went to the action's own private /tmp.
    assert escaped == (os.geteuid() != 0)


def test_an_output_path_leaving_the_root_is_refused(tmp_path: Path, engine: Path) -> None:
    root = project(tmp_path, engine)
    with runtime(root) as worker:
        env = action(root, "x", ["--out", "out/x.txt", "src/a.txt"], ["src/a.txt"], ["../x.txt"])
        response = worker.execute(make_command(["@x.args"], env=env))
    assert response.exit_code == 125
    assert "output path '../x.txt'" in response.stderr and "leaves the root" in response.stderr


def test_a_dead_remote_is_a_clear_error_not_a_hang(tmp_path: Path, engine: Path) -> None:
    root = project(tmp_path, engine)
    config = json.loads((root / "worker.json").read_text())
    config["remote"]["endpoint"] = f"unix://{tmp_path}/nothing.sock"
    (root / "worker.json").write_text(json.dumps(config))
    with runtime(root) as worker:
        env = copy_action(root, "d")
        response = worker.execute(make_command(["@d.args"], env=env))
    assert response.exit_code == 125
    assert "did not answer GetCapabilities" in response.stderr


def test_two_instance_names_never_share_a_worker(tmp_path: Path, engine: Path) -> None:
    pids = {}
    for instance in ("main", "tenant-b"):
        root = project(tmp_path / instance, engine, instance)
        with runtime(root) as worker:
            for i in range(2):
                env = action(
                    root,
                    f"t{i}",
                    ["--out", f"out/t{i}.txt", "src/a.txt"],
                    ["src/a.txt"],
                    [f"out/t{i}.txt"],
                )
                response = worker.execute(make_command([f"@t{i}.args"], env=env))
                assert response.exit_code == 0, response.stderr
            pids[instance] = {reported((root / "out" / f"t{i}.txt").read_text()) for i in range(2)}
    assert len(pids["main"]) == 1 and len(pids["tenant-b"]) == 1  # warm within a tenant
    assert pids["main"] != pids["tenant-b"]  # never across tenants


def test_a_dead_remote_falls_back_to_local_when_the_config_allows(
    tmp_path: Path, engine: Path
) -> None:
    root = project(tmp_path, engine)
    config = json.loads((root / "worker.json").read_text())
    config["remote"]["endpoint"] = f"unix://{tmp_path}/nothing.sock"
    config["remote"]["fallback_local"] = True
    (root / "worker.json").write_text(json.dumps(config))
    with runtime(root) as worker:
        env = copy_action(root, "f")
        response = worker.execute(make_command(["@f.args"], env=env))
    assert response.exit_code == 0, response.stderr
    assert "remote execution failed" in response.stderr and "ran locally instead" in response.stderr
    assert (root / "out" / "f.txt").read_text().startswith("alpha\npid=")


def test_blobs_over_the_batch_limit_go_through_bytestream(tmp_path: Path, engine: Path) -> None:
    root = project(tmp_path, engine)
    big = os.urandom(6 << 20).hex()[: 6 << 20]  # 6 MiB of text, over BuildGrid's 4 MiB batches
    (root / "src" / "big.txt").write_text(big)
    with runtime(root) as worker:
        env = action(
            root, "b", ["--out", "out/b.txt", "src/big.txt"], ["src/big.txt"], ["out/b.txt"]
        )
        response = worker.execute(make_command(["@b.args"], env=env))
    assert response.exit_code == 0, response.stderr
    assert (root / "out" / "b.txt").read_text().startswith(big)


def test_a_missing_input_is_a_clear_error(tmp_path: Path, engine: Path) -> None:
    root = project(tmp_path, engine)
    with runtime(root) as worker:
        env = action(
            root, "m", ["--out", "out/m.txt", "src/gone.txt"], ["src/gone.txt"], ["out/m.txt"]
        )
        response = worker.execute(make_command(["@m.args"], env=env))
    assert response.exit_code == 125
    assert "input src/gone.txt" in response.stderr and "missing" in response.stderr


def test_an_executor_killed_mid_action_loses_nothing(
    tmp_path: Path, disrupted_engine: Path
) -> None:
    """SIGKILL the executor running a slow action: BuildGrid requeues the lease once the
    bot stops renewing its session, the other executor of the instance runs it, and the
    client's Execute stream sees it complete."""
    engine = disrupted_engine
    root = project(tmp_path, engine)
    (root / "src" / "a.txt").write_text(f"slow {tmp_path}\n")  # not in the action cache
    earlier = set(engine.glob("executors/*/actions/*/started.txt"))
    with runtime(root) as worker:
        env = copy_action(root, "k", "--sleep", "3")
        pending = in_background(worker, "k.args", env)
        victim, _ = running_action(engine, earlier)
        os.kill(victim, signal.SIGKILL)
        response = pending.result(timeout=120)
    assert response.exit_code == 0, response.stderr
    assert (root / "out" / "k.txt").read_text().startswith(f"slow {tmp_path}\n")


def test_auto_runs_locally_while_a_local_slot_is_free_and_overflows_to_remote(
    tmp_path: Path, engine: Path
) -> None:
    root = project(tmp_path, engine)
    (root / "src" / "a.txt").write_text(f"auto {tmp_path}\n")
    config = json.loads((root / "worker.json").read_text())
    config.update(routing="auto", max_instances=1)
    (root / "worker.json").write_text(json.dumps(config))
    with runtime(root) as worker:

        def run(name: str, *args: str) -> None:
            env = action(
                root,
                name,
                [*args, "--out", f"out/{name}.txt", "src/a.txt"],
                ["src/a.txt"],
                [f"out/{name}.txt"],
            )
            response = worker.execute(make_command([f"@{name}.args"], env=env))
            assert response.exit_code == 0, response.stderr

        slow = threading.Thread(target=run, args=("a", "--sleep", "2"))
        slow.start()
        deadline = time.monotonic() + 30
        while not (root / "started.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # the local backend writes it in the project (no sandbox_dir)
        run("b")  # the one local slot is busy: remote
        slow.join(timeout=60)
        run("c")  # the slot is free again: local, on the same warm backend

    def pid(name: str) -> str:
        return reported((root / "out" / f"{name}.txt").read_text())

    assert pid("a") == pid("c")  # local and warm
    assert pid("b") != pid("a")
    assert (root / "started.txt").read_text() == pid("a")  # a ran in the project: locally


def test_an_output_that_is_a_symlink_out_of_the_action_is_refused(
    tmp_path: Path, engine: Path
) -> None:
    root = project(tmp_path, engine)
    with runtime(root) as worker:
        env = action(root, "l", ["--link", "out/l.txt", "/etc/hostname"], [], ["out/l.txt"])
        response = worker.execute(make_command(["@l.args"], env=env))
    assert response.exit_code == 125
    assert "code 3" in response.stderr  # INVALID_ARGUMENT: refused, not retried
    assert "leaves the action's directory" in response.stderr or "symlink" in response.stderr
    assert not (root / "out" / "l.txt").exists()


def test_an_executor_stopped_mid_action_finishes_it_first(
    tmp_path: Path, disrupted_engine: Path
) -> None:
    """SIGTERM (cluster down, a deploy) lets the running action finish on the same worker
    and be reported, then the executor leaves (BOT_TERMINATING)."""
    engine = disrupted_engine
    root = project(tmp_path, engine)
    (root / "src" / "a.txt").write_text(f"graceful {tmp_path}\n")
    earlier = set(engine.glob("executors/*/actions/*/started.txt"))  # a killed one's
    with runtime(root) as worker:
        env = copy_action(root, "g", "--sleep", "2")
        pending = in_background(worker, "g.args", env)
        executor, worker_pid = running_action(engine, earlier)
        os.kill(executor, signal.SIGTERM)
        response = pending.result(timeout=120)
    assert response.exit_code == 0, response.stderr
    # Finished by the worker that had started it: not lost, not run again elsewhere.
    assert reported((root / "out" / "g.txt").read_text()) == worker_pid
    assert wait_gone([executor]) == []


def racing(root: Path) -> None:
    config = json.loads((root / "worker.json").read_text())
    config["routing"] = "race"
    (root / "worker.json").write_text(json.dumps(config))


def wait_for(path: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared"


def wait_for_text(path: Path, timeout_s: float = 30) -> str:
    """What a worker writes to ``path`` (its identity), once it is written."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()):
            return text
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written")


def test_race_remote_wins_and_the_local_side_is_stopped_before_the_outputs_land(
    tmp_path: Path, engine: Path, signals: Path
) -> None:
    """The local side keeps rewriting the output until it is stopped (a loser still
    writing); the remote side's output lands after that, and stays."""
    root = project(tmp_path, engine)
    racing(root)
    (root / "src" / "a.txt").write_text(f"race remote {tmp_path}\n")
    go_remote = signals / "go-remote"
    with runtime(root) as worker:
        env = action(
            root,
            "rw",
            [
                *("--scribble-if", "local", "out/rw.txt", "--wait-if", "remote", str(go_remote)),
                *("--out", "out/rw.txt", "src/a.txt"),
            ],
            ["src/a.txt"],
            ["out/rw.txt"],
        )
        pending = in_background(worker, "rw.args", env)
        wait_for(root / "out" / "rw.txt")  # the local side is scribbling
        local = (root / "started.txt").read_text()
        local_pid = host_pid(local)
        go_remote.touch()
        response = pending.result(timeout=60)
        assert response.exit_code == 0, response.stderr
        assert is_gone(local_pid)  # stopped before the winner's outputs were put in place
        time.sleep(0.3)  # a loser still running would have scribbled over them by now
        text = (root / "out" / "rw.txt").read_text()
        assert text.startswith(f"race remote {tmp_path}\n")
        assert reported(text) != local  # written by the remote worker
        # The local pool is whole again: the next race starts a fresh local backend.
        (root / "started.txt").unlink()
        env = copy_action(root, "rw2", "--wait-if", "remote", "never")
        response = worker.execute(make_command(["@rw2.args"], env=env))
        assert response.exit_code == 0, response.stderr
        assert reported((root / "out" / "rw2.txt").read_text()) != local


def test_a_race_answered_by_the_action_cache_never_starts_the_local_side(
    tmp_path: Path, engine: Path
) -> None:
    root = project(tmp_path, engine)
    racing(root)
    (root / "src" / "a.txt").write_text(f"race cached {tmp_path}\n")
    with runtime(root) as worker:
        env = copy_action(root, "rc", "--wait-if", "local", "never")
        first = worker.execute(make_command(["@rc.args"], env=env))  # remote runs it
        assert first.exit_code == 0, first.stderr
        written = (root / "out" / "rc.txt").read_text()
        (root / "out" / "rc.txt").unlink()
        (root / "started.txt").unlink(missing_ok=True)
        second = worker.execute(make_command(["@rc.args"], env=env))
    assert second.exit_code == 0, second.stderr
    assert (root / "out" / "rc.txt").read_text() == written  # from the action cache
    assert not (root / "started.txt").exists()  # no local backend was spent on it


def test_a_race_past_its_timeout_stops_both_sides(tmp_path: Path, engine: Path) -> None:
    root = project(tmp_path, engine)
    racing(root)
    (root / "src" / "a.txt").write_text(f"race timeout {tmp_path}\n")
    earlier = set(engine.glob("executors/*/actions/*/started.txt"))
    with runtime(root) as worker:
        env = copy_action(root, "rt", "--wait-if", "local", "never", "--wait-if", "remote", "never")
        pending = in_background(worker, "rt.args", env, timeout_s=5)
        sides = [running_action(engine, earlier)[1], wait_for_text(root / "started.txt")]
        pids = live_host_pids(sides)  # a side already stopped (a slow machine) is gone
        response = pending.result(timeout=60)
    assert response.exit_code == 125 and response.timed_out_after_s == 5
    assert "ran past its timeout of 5 s" in response.stderr
    assert wait_gone(pids, 30) == []
    assert not (root / "out" / "rt.txt").exists()


def test_a_remote_worker_that_crashes_is_an_error_not_the_actions_exit_code(
    tmp_path: Path, engine: Path
) -> None:
    """The executor reports a worker fault as the lease's status (INTERNAL, which the
    engine retries), never as an exit code the client would take for the action's."""
    root = project(tmp_path, engine)
    (root / "src" / "a.txt").write_text(f"crash {tmp_path}\n")
    with runtime(root) as worker:
        env = action(root, "cr", ["--exit"], [], ["out/cr.txt"])
        response = worker.execute(make_command(["@cr.args"], env=env))
    assert response.exit_code == 125
    assert "code 13" in response.stderr and "the persistent worker failed" in response.stderr


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "one-shot"])
def test_race_local_wins_and_the_remote_action_is_cancelled_on_its_executor(
    tmp_path: Path, engine: Path, persistent: bool
) -> None:
    root = project(tmp_path, engine)
    racing(root)
    config = json.loads((root / "worker.json").read_text())
    config["remote"]["persistent"] = persistent  # False: the executor runs it one-shot
    (root / "worker.json").write_text(json.dumps(config))
    (root / "src" / "a.txt").write_text(f"race local {tmp_path}\n")
    go_local = root / "go-local"
    earlier = set(engine.glob("executors/*/actions/*/started.txt"))
    with runtime(root) as worker:
        env = copy_action(
            root, "lw", "--sleep-if", "remote", "300", "--wait-if", "local", "go-local"
        )
        pending = in_background(worker, "lw.args", env)
        executor, remote = running_action(engine, earlier)  # the remote side is running
        remote_pid = host_pid(remote)
        actions = {p.parent for p in engine.glob("executors/*/actions/*/started.txt")} - {
            p.parent for p in earlier
        }
        go_local.touch()
        response = pending.result(timeout=60)
        assert response.exit_code == 0, response.stderr
        local = (root / "started.txt").read_text()
        assert reported((root / "out" / "lw.txt").read_text()) == local
        # No orphan: the operation was cancelled on the server, the executor dropped the
        # lease and killed the worker running it, and removed the action's directory.
        assert wait_gone([remote_pid], 30) == []
        deadline = time.monotonic() + 30
        while any(a.exists() for a in actions) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(a.exists() for a in actions)
        cancelled = 'executor_actions_total{outcome="cancelled"}'
        while metric(engine, cancelled) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(engine, cancelled) >= 1
        assert not is_gone(executor)  # the executor itself lives on
        # The discarded worker's output never lands: the local result stays.
        assert reported((root / "out" / "lw.txt").read_text()) == local


def test_race_with_a_dead_remote_answers_with_the_local_result(
    tmp_path: Path, engine: Path
) -> None:
    root = project(tmp_path, engine)
    racing(root)
    config = json.loads((root / "worker.json").read_text())
    config["remote"]["endpoint"] = f"unix://{tmp_path}/nothing.sock"
    (root / "worker.json").write_text(json.dumps(config))
    with runtime(root) as worker:
        env = copy_action(root, "rd")
        response = worker.execute(make_command(["@rd.args"], env=env))
    assert response.exit_code == 0, response.stderr
    assert (root / "out" / "rd.txt").read_text().startswith("alpha\npid=")


def test_a_remote_failure_in_a_race_waits_for_the_local_side(tmp_path: Path, engine: Path) -> None:
    """A runtime failure (here an invalid output path on the remote side's action) is not
    a result: the local side's answer is the race's."""
    root = project(tmp_path, engine)
    racing(root)
    with runtime(root) as worker:
        env = action(
            root,
            "rf",
            ["--sleep-if", "local", "2", "--link", "out/rf.txt", "/etc/hostname"],
            [],
            ["out/rf.txt"],
        )
        response = worker.execute(make_command(["@rf.args"], env=env))
    assert response.exit_code == 0, response.stderr
    assert "the remote side of the race failed" in response.stderr
    assert (root / "out" / "rf.txt").is_symlink()  # the local side's own output


def test_a_remote_request_the_runtime_gives_up_on_is_cancelled_on_its_executor(
    tmp_path: Path, engine: Path
) -> None:
    """The runtime stops (SIGTERM) while a remote request runs with no timeout: past
    shutdown_grace_s the request is answered with an error, and the operation is
    cancelled on the server, so the executor stops the worker running it."""
    root = project(tmp_path, engine)
    config = json.loads((root / "worker.json").read_text())
    config["shutdown_grace_s"] = 0.5
    (root / "worker.json").write_text(json.dumps(config))
    (root / "src" / "a.txt").write_text(f"abandoned {tmp_path}\n")
    earlier = set(engine.glob("executors/*/actions/*/started.txt"))
    with runtime(root) as worker:
        env = copy_action(root, "ab", "--sleep-if", "remote", "300")
        pending = in_background(worker, "ab.args", env)
        executor, remote = running_action(engine, earlier)
        remote_pid = host_pid(remote)
        assert worker.terminate() == 0
        response = pending.result(timeout=30)
    assert response.exit_code == 125
    assert "shutting down" in response.stderr
    assert wait_gone([remote_pid], 30) == []
    assert not is_gone(executor)
    assert not (root / "out" / "ab.txt").exists()


def test_a_multiplex_worker_takes_concurrent_remote_actions_of_its_key(
    tmp_path: Path, engine: Path, signals: Path
) -> None:
    """A multiplex backend's actions carry persistentWorkerMultiplex: the executor that
    holds the key's warm worker serves a second action in the same process while the
    first still runs (affinity sends both there)."""
    root = project(tmp_path, engine)
    config = json.loads((root / "worker.json").read_text())
    config.update(command=["python3", "tools/worker.py", "--multiplex"], multiplex=True)
    (root / "worker.json").write_text(json.dumps(config))
    (root / "src" / "a.txt").write_text(f"multiplex {tmp_path}\n")
    go = signals / "go"
    earlier = set(engine.glob("executors/*/actions/*/started.txt"))
    with runtime(root) as worker:

        def send(name: str, *args: str) -> Future[ExecuteResponse]:
            env = action(
                root,
                name,
                [*args, "--out", f"out/{name}.txt", "src/a.txt"],
                ["src/a.txt"],
                [f"out/{name}.txt"],
            )
            return in_background(worker, f"{name}.args", env)

        warm = send("m0").result(timeout=60)  # the worker starts; the scheduler learns where
        assert warm.exit_code == 0, warm.stderr
        first = send("m1", "--wait-if", "remote", str(go))
        running_action(engine, earlier)
        second = send("m2").result(timeout=60)  # while m1 waits
        assert second.exit_code == 0, second.stderr
        go.touch()
        response = first.result(timeout=60)
    assert response.exit_code == 0, response.stderr
    pids = {reported((root / "out" / f"m{i}.txt").read_text()) for i in range(3)}
    assert len(pids) == 1  # one process served all three, two of them at once


def test_a_dropped_execute_stream_is_reattached_and_nothing_is_lost(
    tmp_path: Path, engine: Path, signals: Path
) -> None:
    """The client's connection breaks while the action runs (a proxy between it and
    BuildGrid drops every connection): it reconnects, follows the same operation with
    WaitExecution and gets the result."""
    root = project(tmp_path, engine)
    proxy_dir = tempfile.TemporaryDirectory(prefix="wr-proxy-")  # short: a socket path
    proxy_socket = Path(proxy_dir.name) / "proxy.sock"
    config = json.loads((root / "worker.json").read_text())
    config["remote"]["endpoint"] = f"unix://{proxy_socket}"
    (root / "worker.json").write_text(json.dumps(config))
    (root / "src" / "a.txt").write_text(f"dropped {tmp_path}\n")
    go = signals / "go"
    earlier = set(engine.glob("executors/*/actions/*/started.txt"))
    with UnixProxy(proxy_socket, engine / "run" / "buildgrid.sock") as proxy:
        with runtime(root) as worker:
            env = copy_action(root, "dr", "--wait-if", "remote", str(go))
            pending = in_background(worker, "dr.args", env)
            running_action(engine, earlier)
            before = proxy.connections
            proxy.drop()
            go.touch()
            response = pending.result(timeout=60)
        assert proxy.connections > before  # it came back to follow the operation
    proxy_dir.cleanup()
    assert response.exit_code == 0, response.stderr
    assert (root / "out" / "dr.txt").read_text().startswith(f"dropped {tmp_path}\n")


def test_the_platforms_own_properties_reach_the_engine(tmp_path: Path, engine: Path) -> None:
    """remote.properties go on the action's platform: one the executors advertise
    (OSFamily=linux) runs; one the engine does not know is refused clearly, not queued."""
    root = project(tmp_path, engine)
    config = json.loads((root / "worker.json").read_text())
    config["remote"]["properties"] = {"OSFamily": "linux"}
    (root / "worker.json").write_text(json.dumps(config))
    (root / "src" / "a.txt").write_text(f"properties {tmp_path}\n")
    with runtime(root) as worker:
        env = copy_action(root, "p")
        response = worker.execute(make_command(["@p.args"], env=env))
    assert response.exit_code == 0, response.stderr
    config["remote"]["properties"] = {"OSFamily": "linux", "gpu": "h100"}
    (root / "worker.json").write_text(json.dumps(config))
    with runtime(root) as worker:
        response = worker.execute(make_command(["@p.args"], env=env, timeout_s=30))
    assert response.exit_code == 125
    assert "remote execution failed: Execute failed: FAILED_PRECONDITION" in response.stderr
    assert "Unregistered platform property [gpu" in response.stderr


def test_blobs_the_server_lost_are_uploaded_again(tmp_path: Path, disrupted_engine: Path) -> None:
    """The client skips FindMissingBlobs for blobs it saw present in the last 10 minutes.
    Here the server loses them (BuildGrid restarted: its CAS is in memory), so the
    executor cannot fetch the inputs; once the engine gives up retrying, the client
    checks every blob again, uploads the missing ones and runs the action once more."""
    engine = disrupted_engine
    root = project(tmp_path, engine)
    (root / "src" / "a.txt").write_text(f"lost {tmp_path}\n")
    with runtime(root) as worker:
        env = copy_action(root, "l1")
        first = worker.execute(make_command(["@l1.args"], env=env))
        assert first.exit_code == 0, first.stderr
        server = json.loads((engine / "state.json").read_text())["buildgrid_pid"]
        os.killpg(server, signal.SIGKILL)
        assert wait_gone([server]) == []
        back = cluster("up", "--executors", "3", "--dir", str(engine))
        assert back.returncode == 0, back.stderr
        env = copy_action(root, "l2")
        second = worker.execute(make_command(["@l2.args"], env=env))
    assert second.exit_code == 0, second.stderr
    assert (root / "out" / "l2.txt").read_text().startswith(f"lost {tmp_path}\n")


def start_execute(
    channel: grpc.Channel, root: re_pb2.Directory, command: re_pb2.Command, timeout_s: float
) -> Any:
    """Uploads ``root`` and ``command`` and executes their action on instance main (past
    the action cache): the operation's stream (an iterator of Operations that can be
    cancelled)."""
    (root_digest,) = upload(channel, serialized(root))
    (command_digest,) = upload(channel, serialized(command))
    action = re_pb2.Action(command_digest=command_digest, input_root_digest=root_digest)
    (action_digest,) = upload(channel, serialized(action))
    request = re_pb2.ExecuteRequest(
        instance_name="main", action_digest=action_digest, skip_cache_lookup=True
    )
    return re_grpc.ExecutionStub(channel).Execute(request, timeout=timeout_s)


def execute_directly(
    channel: grpc.Channel, root: re_pb2.Directory, command: re_pb2.Command
) -> re_pb2.ExecuteResponse:
    """Executes as start_execute does and returns the ExecuteResponse it ends with: the
    executor's answer, as a REAPI client sees it."""
    for operation in start_execute(channel, root, command, timeout_s=120):
        if operation.done:
            response = re_pb2.ExecuteResponse()
            assert operation.response.Unpack(response)
            return response
    raise AssertionError("the operation never finished")


def unique_command(*arguments: str, **fields: object) -> re_pb2.Command:
    """A command no earlier run has cached: its last argument is new."""
    return re_pb2.Command(arguments=[*arguments, uuid.uuid4().hex], **fields)  # type: ignore[arg-type]


def test_a_command_with_a_working_directory_is_refused_not_run_elsewhere(engine: Path) -> None:
    """REAPI's Command.working_directory is not supported by the executor: such an
    action fails with INVALID_ARGUMENT naming it (not retried), instead of running, and
    taking its outputs, in the input root."""
    command = unique_command("/bin/true", output_paths=["out"], working_directory="sub")
    with grpc.insecure_channel(f"unix://{engine}/run/buildgrid.sock") as channel:
        response = execute_directly(channel, re_pb2.Directory(), command)
    assert response.status.code == 3, response.status  # INVALID_ARGUMENT
    assert "working directory ('sub')" in response.status.message


def test_an_environment_variable_no_process_can_have_is_refused(engine: Path) -> None:
    """A name holding `=` was split by `env -i`, which sets the tenant's variables, into
    another variable than the one sent; such an action fails INVALID_ARGUMENT."""
    variable = re_pb2.Command.EnvironmentVariable(name="A=B", value="1")
    command = unique_command("/bin/true", environment_variables=[variable])
    with grpc.insecure_channel(f"unix://{engine}/run/buildgrid.sock") as channel:
        response = execute_directly(channel, re_pb2.Directory(), command)
    assert response.status.code == 3, response.status  # INVALID_ARGUMENT
    assert "environment variable no process can have ('A=B'" in response.status.message


@pytest.mark.parametrize(
    "malformed", ["a name twice", "not a Directory", "a NUL in a name", "a name too long"]
)
def test_a_malformed_input_root_fails_the_action_as_invalid(engine: Path, malformed: str) -> None:
    """An input root that names an entry twice, names one with a NUL or more than 255
    bytes, or whose directory blob is not a Directory message: the action fails
    INVALID_ARGUMENT saying so (the action's own fault, not retried), instead of
    INTERNAL."""
    with grpc.insecure_channel(f"unix://{engine}/run/buildgrid.sock") as channel:
        (blob,) = upload(channel, f"x {uuid.uuid4().hex}".encode())
        root = re_pb2.Directory()
        if malformed == "a name twice":
            (empty,) = upload(channel, serialized(re_pb2.Directory()))
            root.files.add(name="x", digest=blob)
            root.directories.add(name="x", digest=empty)
        elif malformed == "not a Directory":
            (garbage,) = upload(channel, b"\xff\xff\xff not a message " + uuid.uuid4().bytes)
            root.directories.add(name="sub", digest=garbage)
        elif malformed == "a NUL in a name":
            root.files.add(name="x\0y", digest=blob)
        else:
            root.files.add(name="n" * 256, digest=blob)
        response = execute_directly(channel, root, unique_command("/bin/true"))
    assert response.status.code == 3, response.status  # INVALID_ARGUMENT
    expected = {
        "a name twice": "'x' appears twice in the input root",
        "not a Directory": "a directory of its input root is not a Directory message",
        "a NUL in a name": "invalid name 'x\\x00y' in the input root",
        "a name too long": "in the input root is longer than 255 bytes",
    }[malformed]
    assert expected in response.status.message


@pytest.mark.parametrize("lacking", ["files", "directory"])
def test_blobs_the_server_lacks_fail_the_action_as_missing_naming_them(
    engine: Path, lacking: str
) -> None:
    """Input files or a directory gone from the CAS (never uploaded, or expired): the
    action fails FAILED_PRECONDITION with a PreconditionFailure naming every such blob
    read together, as REAPI asks, so that a client uploads them again (not INTERNAL,
    retried to no end). (A missing command never reaches the executor: BuildGrid refuses
    the Execute call itself.)"""
    absent = []
    for _ in range(2 if lacking == "files" else 1):
        data = f"never uploaded {uuid.uuid4().hex}".encode()
        absent.append(re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data)))
    root = re_pb2.Directory()
    if lacking == "files":
        root.files.add(name="a.txt", digest=absent[0])
        root.files.add(name="b.txt", digest=absent[1])
    else:
        root.directories.add(name="sub", digest=absent[0])
    with grpc.insecure_channel(f"unix://{engine}/run/buildgrid.sock") as channel:
        response = execute_directly(channel, root, unique_command("/bin/true"))
    assert response.status.code == 9, response.status  # FAILED_PRECONDITION
    for digest in absent:
        assert f"{digest.hash}/{digest.size_bytes}" in response.status.message
    assert "not in the CAS" in response.status.message
    violations = []
    for detail in response.status.details:
        failure = error_details_pb2.PreconditionFailure()
        assert detail.Unpack(failure)
        violations += [(v.type, v.subject) for v in failure.violations]
    assert sorted(violations) == sorted(
        ("MISSING", f"blobs/{d.hash}/{d.size_bytes}") for d in absent
    )


def test_an_output_past_the_executors_limit_fails_the_action_and_spares_the_executor(
    engine: Path,
) -> None:
    """A tenant's sparse file of 2 GB (no disk, all of it in memory if read) passes the
    executor's default output limit of 1024 MB: the action fails RESOURCE_EXHAUSTED naming
    the file and the limit, the file is never read, and the executor runs the next action."""
    with grpc.insecure_channel(f"unix://{engine}/run/buildgrid.sock") as channel:

        def execute(script: str) -> re_pb2.ExecuteResponse:
            command = unique_command("/bin/sh", "-c", script, output_paths=["out/big"])
            return execute_directly(channel, re_pb2.Directory(), command)

        refused = execute("truncate -s 2G out/big")
        assert refused.status.code == 8, refused.status  # RESOURCE_EXHAUSTED
        assert "out/big is 2048 MB, which would take the outputs past 1024 MB" in (
            refused.status.message
        )
        assert "--max-output-mb" in refused.status.message
        fine = execute("echo small > out/big")
        assert fine.status.code == 0, fine.status
        assert [f.path for f in fine.result.output_files] == ["out/big"]
