"""Shared fixtures: start the runtime as Buck2 does, with the fake backend behind it,
and check afterwards that no process it started is left behind."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from worker_runtime.buck2.emulator import Buck2Worker

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_WORKER = REPO_ROOT / "tests" / "backends" / "fake_worker.py"
RUNTIME = [sys.executable, "-m", "worker_runtime"]


def processes_with_marker(marker: str) -> list[psutil.Process]:
    """Every live process whose environment carries ``marker`` (the runtime and its backends)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.environ().get("TEST_PROCESS_MARKER") == marker
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout_s: float = 10) -> list[int]:
    """Waits for the processes to end; returns those still alive after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if not is_gone(p)]
        time.sleep(0.05)
    return alive


def fake_backend(*startup_args: str) -> list[str]:
    return [sys.executable, str(FAKE_WORKER), *startup_args]


StartRuntime = Callable[..., Buck2Worker]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def start_runtime(log_dir: Path) -> Iterator[StartRuntime]:
    """Starts ``worker-runtime serve [runtime_args] -- backend`` as Buck2 would.

    Every runtime started is SIGTERMed at the end of the test, and the test fails if any
    process it started (runtime or backend) is still alive afterwards.
    """
    started: list[tuple[Buck2Worker, str]] = []

    def start(
        backend: list[str] | None = None,
        runtime_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> Buck2Worker:
        marker = uuid.uuid4().hex
        worker_env = {"WORKER_RUNTIME_LOG_DIR": str(log_dir), "TEST_PROCESS_MARKER": marker}
        worker_env.update(env or {})
        exe = [*RUNTIME, "serve", *(runtime_args or [])]
        if backend is not None:
            exe += ["--", *backend]
        worker = Buck2Worker(exe, project_root=cwd, env=worker_env)
        started.append((worker, marker))
        return worker.start()

    yield start
    leftovers = []
    for worker, marker in started:
        try:
            worker.terminate()
        finally:
            worker.cleanup()
        for proc in processes_with_marker(marker):
            leftovers.append(f"{proc.pid} {proc.cmdline()}")
            proc.kill()
    assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture(autouse=True)
def _no_worker_socket_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_SOCKET", raising=False)
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
