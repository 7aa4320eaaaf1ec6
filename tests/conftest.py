"""Shared fixtures: start the runtime as Buck2 does, with the fake backend behind it,
and check afterwards that no process it started is left behind."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from worker_runtime.config import SERVERS, RuntimeConfig
from worker_runtime.daemon.control import try_connect
from workers_dev.emulator import Buck2Worker

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


def backend_logs(log_dir: Path) -> str:
    """Everything the backends of this test wrote to their stderr logs."""
    return "".join(p.read_text(errors="replace") for p in sorted(log_dir.rglob("backend-*.log")))


def wait_started(marker: Path, timeout_s: float = 30.0) -> None:
    """Returns once the fake backend has started the request that makes ``marker``
    (``sleep SECONDS MARKER``): a signal sent then finds it in flight, on any machine."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert time.monotonic() < deadline, f"the request never started ({marker} not made)"
        time.sleep(0.01)


def fake_backend(*startup_args: str) -> list[str]:
    return [sys.executable, str(FAKE_WORKER), *startup_args]


StartRuntime = Callable[..., Buck2Worker]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private daemon directory for every test (short: socket paths are limited to 107
    bytes); every daemon started in it is stopped when the test ends."""
    path = Path(tempfile.mkdtemp(prefix="wrt-", dir="/tmp"))
    monkeypatch.setenv("WORKER_RUNTIME_DIR", str(path))
    yield path
    stop_daemons(path)
    shutil.rmtree(path, ignore_errors=True)


def stop_daemons(runtime_dir: Path) -> None:
    """Stops every daemon whose control socket is in ``runtime_dir`` and waits for it."""
    for sock in runtime_dir.glob("*.sock"):
        client = try_connect(sock, timeout_s=10)
        if client is None:
            continue
        try:
            pid = int(client.request({"op": "stop"})["pid"])
        except (OSError, ConnectionError):
            continue
        finally:
            client.close()
        assert wait_gone([pid], 30) == [], f"daemon {pid} did not stop"


@pytest.fixture
def server() -> str:
    """What serves the socket in ``start_runtime`` (the ``server`` setting). A module runs
    its tests on every server by overriding it with ``server = every_server``."""
    return RuntimeConfig().server


@pytest.fixture(params=SERVERS)
def every_server(request: pytest.FixtureRequest) -> str:
    """``server``, once for each server (assign it to ``server`` in a test module)."""
    return str(request.param)


@pytest.fixture
def start_runtime(log_dir: Path, runtime_dir: Path, server: str) -> Iterator[StartRuntime]:
    """Starts ``worker-runtime serve [runtime_args] -- backend`` as Buck2 would.

    Every runtime started is SIGTERMed at the end of the test, every daemon is stopped,
    and the test fails if any process they started (front, daemon or backend) is still
    alive afterwards.
    """
    started: list[tuple[Buck2Worker, str]] = []
    # One marker for the whole test: the front's environment is part of what makes
    # backends shareable, and Buck2's environment is the same from command to command.
    test_marker = uuid.uuid4().hex

    def start(
        backend: list[str] | None = None,
        runtime_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> Buck2Worker:
        worker_env = {"WORKER_RUNTIME_LOG_DIR": str(log_dir), "TEST_PROCESS_MARKER": test_marker}
        worker_env.update(env or {})
        marker = worker_env["TEST_PROCESS_MARKER"]
        server_args = ["--server", server] if server != RuntimeConfig().server else []
        exe = [*RUNTIME, "serve", *server_args, *(runtime_args or [])]
        if backend is not None:
            exe += ["--", *backend]
        worker = Buck2Worker(exe, project_root=cwd, env=worker_env)
        started.append((worker, marker))
        return worker.start()

    yield start
    leftovers = []
    for worker, _marker in started:
        try:
            worker.terminate()
        finally:
            worker.cleanup()
    stop_daemons(runtime_dir)  # before the check below; the fixture would stop them after it
    for _worker, marker in started:
        for proc in processes_with_marker(marker):
            leftovers.append(f"{proc.pid} {proc.cmdline()}")
            proc.kill()
    assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture(autouse=True)
def _root_when_needed(request: pytest.FixtureRequest) -> None:
    """A test marked ``needs_root("why")`` fails at once, saying why, when the suite does
    not run as root. CI runs as root (its bootstrap installs with apt-get); such a test
    never skips, so the sandbox, tenant and control-group tests cannot silently go
    unrun."""
    marker = request.node.get_closest_marker("needs_root")
    if marker is not None and os.getuid() != 0:
        pytest.fail(f"needs root ({marker.args[0]}): run the suite as root, as CI does")


@pytest.fixture(autouse=True)
def _no_worker_socket_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_SOCKET", raising=False)
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
