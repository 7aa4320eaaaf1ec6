"""The runtime served as Buck2 launches it: the three RPCs, flags, config and start-up errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import (
    REPO_ROOT,
    RUNTIME,
    StartRuntime,
    backend_logs,
    every_server,
    fake_backend,
)
from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.proto import buck2_worker_pb2_grpc as pb_grpc
from workers_dev.emulator import StreamingSession, make_command

#: Every test that starts the runtime runs once on each server.
server = every_server


def test_without_worker_socket_exits_2_and_says_how_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "WORKER_SOCKET"}
    result = subprocess.run(
        [*RUNTIME, "serve", "--", "true"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "WORKER_SOCKET is not set" in result.stderr
    assert "WorkerInfo" in result.stderr


def test_bad_config_key_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"command": ["x"], "multiplx": True}))
    env = dict(os.environ, WORKER_SOCKET=str(tmp_path / "s"))
    result = subprocess.run(
        [*RUNTIME, "serve", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unknown config key `multiplx`" in result.stderr


@pytest.mark.parametrize("daemon", [[], ["--no-daemon"]])
def test_an_empty_config_path_is_refused_saying_so(tmp_path: Path, daemon: list[str]) -> None:
    """`--config "$UNSET"` ran on the defaults, saying nothing."""
    env = dict(os.environ, WORKER_SOCKET=str(tmp_path / "s"))
    result = subprocess.run(
        [*RUNTIME, "serve", "--config", "", *daemon, "--", "true"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--config names no file (an empty path: is the variable" in result.stderr


def test_unary_execute_reuses_one_warm_backend(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend())
    first = worker.run("pid")
    assert first.exit_code == 0
    assert all(worker.run("pid").stderr == first.stderr for _ in range(5))
    echoed = worker.run("echo", "hello", "world")
    assert (echoed.exit_code, echoed.stderr) == (0, "hello world")
    failed = worker.run("exit", "3", "compile error")
    assert (failed.exit_code, failed.stderr) == (3, "compile error")


def test_backend_is_started_with_persistent_worker_and_runtime_cwd(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    (tmp_path / "req.args").write_text("args\nfrom-file\n")
    worker = start_runtime(fake_backend("--startup-flag"), cwd=tmp_path)
    response = worker.run("@req.args", "@@kept", "--flagfile=kept")
    assert json.loads(response.stderr) == ["args", "from-file", "@@kept", "--flagfile=kept"]
    pid = int(worker.run("pid").stderr)
    import psutil

    proc = psutil.Process(pid)
    assert proc.cmdline()[-2:] == ["--startup-flag", "--persistent_worker"]
    assert proc.cwd() == str(tmp_path)
    assert "WORKER_SOCKET" not in proc.environ()


def test_config_file_with_flag_override(start_runtime: StartRuntime, tmp_path: Path) -> None:
    config = tmp_path / "runtime.json"
    config.write_text(
        json.dumps(
            {"command": fake_backend("--protocol", "json"), "protocol": "proto", "verbosity": 10}
        )
    )
    worker = start_runtime(None, ["--config", str(config), "--protocol", "json"])
    assert worker.run("echo", "json ok").stderr == "json ok"


@pytest.mark.parametrize("protocol", ["proto", "json"])
def test_streaming_answers_out_of_order_by_id(start_runtime: StartRuntime, protocol: str) -> None:
    worker = start_runtime(
        fake_backend("--multiplex", "--protocol", protocol), ["--multiplex", "--protocol", protocol]
    )

    async def scenario() -> list[str]:
        async with StreamingSession(worker.target, worker.proc) as session:
            slow = asyncio.create_task(session.execute(make_command(["sleep", "0.5"])))
            await asyncio.sleep(0.1)
            fast = await session.execute(make_command(["echo", "fast"]))
            assert not slow.done(), "the fast request must not wait for the slow one"
            return [fast.stderr, (await slow).stderr]

    assert asyncio.run(scenario()) == ["fast", "slept"]


def test_exec_with_cancel_event(start_runtime: StartRuntime, tmp_path: Path, log_dir: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"cancel_grace_s": 0.5}')
    worker = start_runtime(
        fake_backend("--multiplex"), ["--config", str(config), "--multiplex", "--cancellable"]
    )
    pid = worker.run("pid").stderr
    stub = pb_grpc.WorkerStub(worker.channel())

    def events():
        yield pb.ExecuteEvent(command=make_command(["sleep", "30"]))
        time.sleep(0.3)
        yield pb.ExecuteEvent(cancel=pb.ExecuteCancel())

    response = stub.Exec(events(), timeout=20)
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "cancelled by the client" in response.stderr
    # A cancellable multiplex backend is asked to cancel, not killed.
    time.sleep(1.0)  # past cancel_grace_s
    assert worker.run("pid").stderr == pid
    assert "fake_worker: cancelled request" in backend_logs(log_dir)

    done = stub.Exec(iter([pb.ExecuteEvent(command=make_command(["echo", "exec"]))]), timeout=20)
    assert (done.exit_code, done.stderr) == (0, "exec")


def test_exec_must_start_with_a_command(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend())
    stub = pb_grpc.WorkerStub(worker.channel())
    response = stub.Exec(iter([pb.ExecuteEvent(cancel=pb.ExecuteCancel())]), timeout=20)
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "must start with a command" in response.stderr


def test_stream_headers_arrive_before_any_request(start_runtime: StartRuntime) -> None:
    """Buck2 awaits the response headers before sending; a server that waits deadlocks it."""
    worker = start_runtime(fake_backend())

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(worker.target) as channel:
            call = pb_grpc.WorkerStreamingStub(channel).ExecuteStream()
            await asyncio.wait_for(call.initial_metadata(), 5)
            await call.done_writing()

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["daemon", "no-daemon"])
def test_a_log_directory_that_cannot_be_made_exits_2_saying_what_to_set(
    tmp_path: Path, mode: str
) -> None:
    """With the daemon (the default) the daemon failed on it with a traceback, and the
    front exited 1 quoting it; both modes now say what to set, and exit 2."""
    env = dict(
        os.environ,
        WORKER_SOCKET=str(tmp_path / "worker.sock"),
        WORKER_RUNTIME_DIR=str(tmp_path / "daemons"),
    )
    flags = ["--no-daemon"] if mode == "no-daemon" else []
    result = subprocess.run(
        [*RUNTIME, "serve", *flags, "--log-dir", "/proc/nowhere/logs", "--", "true"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "the log directory cannot be used" in result.stderr
    assert "set --log-dir, `log_dir` in the config or WORKER_RUNTIME_LOG_DIR" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "worker.sock").exists()


def test_socket_path_too_long_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(os.environ, WORKER_SOCKET="/tmp/" + "x" * 120 + "/socket")
    result = subprocess.run(
        [*RUNTIME, "serve", "--", sys.executable, "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert "a Unix socket path may have at most 107" in result.stderr


def test_remote_routing_without_an_envelope_is_a_clear_per_request_error(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps({"routing": "remote", "remote": {"endpoint": "grpc://127.0.0.1:1"}})
    )
    worker = start_runtime(fake_backend(), ["--config", str(config)])
    response = worker.run("echo", "x")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "routing `remote` needs the envelope" in response.stderr
    assert "register it with worker_run" in response.stderr
