"""An executor that fails after registering ends its bot session, its unfinished leases
handed back, rather than leaving them to the server until the session's keepalive lapses
(600 s by BuildGrid's default); a --metrics-port in use fails it with one line naming
the port, before it registers. Against a Bots stand-in on a Unix socket."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import grpc
import pytest

from tests.conftest import REPO_ROOT
from tests.in_process_executor import runs_until
from tests.unit.test_executor_cli import executor_uid_arguments
from tests.unit.test_executor_hand_back import HandsOutLeases, last_report
from tests.unit.test_executor_last_report import served
from worker_runtime.executor import bots
from worker_runtime.proto.google.devtools.remoteworkers.v1test2 import bots_pb2
from worker_runtime.remote.channels import parse_endpoint


class CountsSessions(HandsOutLeases):
    def __init__(self) -> None:
        super().__init__(late=False)
        self.created: list[str] = []

    def CreateBotSession(
        self, request: bots_pb2.CreateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        self.created.append(request.bot_session.bot_id)
        return super().CreateBotSession(request, context)


def as_this_user(tmp_path: Path) -> list[str]:
    """What the executor needs to start at all as this user (root: tenants)."""
    if os.getuid() != 0:
        return []
    return [*executor_uid_arguments(), "--no-sandbox", "--uid-map", str(tmp_path / "uids.json")]


def test_a_metrics_port_in_use_fails_the_executor_before_it_registers(tmp_path: Path) -> None:
    """The port was taken after CreateBotSession: the executor exited with a traceback,
    and the lease the server had given the new session waited out its keepalive."""
    stand_in = CountsSessions()
    with (
        served(stand_in, tmp_path) as address,
        socket.socket() as taken,
    ):  # fmt: skip
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "worker_runtime", "executor", "--server", address,
             "--workdir", str(tmp_path / "work"), "--bot-id", f"metrics-{uuid.uuid4().hex}",
             "--metrics-port", str(port), *as_this_user(tmp_path)],
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"worker-runtime executor: error: cannot serve metrics on 127.0.0.1:{port} "
        f"(--metrics-port): {os.strerror(errno.EADDRINUSE)}; choose a free port"
    )
    assert stand_in.created == []  # never registered: no lease stranded


def test_a_fault_after_registering_ends_the_session_and_hands_back_its_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing wrapped the loop: an exception in it (here the idle workers' reaping
    failing, out of descriptors) left the session and its running lease to the server's
    keepalive, and the action's process running."""
    started, stopped = threading.Event(), threading.Event()
    runs = runs_until(started, None, 0, b"never reported")

    def run(runner: object, action: object, instance: str, cancelled: threading.Event) -> object:
        try:
            return runs(runner, action, instance, cancelled)  # type: ignore[arg-type]
        finally:
            stopped.set()

    def fails(self: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(bots.ActionRunner, "run", run)
    monkeypatch.setattr(bots.WorkerPool, "reap_idle", fails)
    stand_in = HandsOutLeases(late=False)
    failures: list[BaseException] = []
    with served(stand_in, tmp_path) as address:
        executor = bots.Executor(
            bots.ExecutorSettings(
                server=parse_endpoint(address), instance="main",
                bot_id=f"failing-{uuid.uuid4().hex}", capacity=1, workdir=tmp_path / "executor",
                max_workers=1, memory_limit_mb=None, worker_idle_s=60,
            )
        )  # fmt: skip

        def serve() -> None:
            try:
                executor.serve()
            except BaseException as exc:
                failures.append(exc)

        loop = threading.Thread(target=serve, daemon=True)
        loop.start()
        try:
            assert started.wait(30), "the executor never started the lease"
            loop.join(60)
            assert not loop.is_alive(), "the executor's loop never failed"
        finally:
            executor.stop()
            loop.join(30)
            executor.channel.close()
    (failure,) = failures
    assert isinstance(failure, OSError) and failure.errno == errno.EMFILE  # still raised
    assert stopped.wait(30), "the running action was never stopped"
    lease = last_report(stand_in)["lease-1"]  # the last update says BOT_TERMINATING
    assert lease.state == bots_pb2.COMPLETED and lease.status.code == bots.UNAVAILABLE
