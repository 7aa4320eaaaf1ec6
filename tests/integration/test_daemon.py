"""The daemon: warm backends across Buck2 commands, privacy, races, faults and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import (
    REPO_ROOT,
    RUNTIME,
    StartRuntime,
    fake_backend,
    wait_gone,
    wait_started,
)
from tests.imports import modules_loaded_by
from worker_runtime.config import RuntimeConfig
from worker_runtime.daemon import commands as daemon_commands
from worker_runtime.daemon import lock
from worker_runtime.daemon.front import daemon_command
from worker_runtime.daemon.paths import DaemonPaths
from workers_dev.emulator import Buck2Worker, StreamingSession, WorkerRequestError, make_command


def daemon_status(root: Path = REPO_ROOT) -> dict[str, Any]:
    result = subprocess.run(
        [*RUNTIME, "status", "--json", "--project-root", str(root)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def daemon_processes(runtime_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            cmdline = proc.cmdline()
            if (
                "daemon" in cmdline
                and proc.environ().get("WORKER_RUNTIME_DIR") == str(runtime_dir)
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_for(predicate: Any, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_backend_stays_warm_across_buck2_commands(start_runtime: StartRuntime) -> None:
    command_1 = start_runtime(fake_backend())
    backend = command_1.run("pid").stderr
    daemon_pid = daemon_status()["pid"]
    assert command_1.proc is not None
    assert os.getpgid(daemon_pid) != os.getpgid(command_1.proc.pid)
    assert command_1.terminate() == 0  # Buck2's end of command: SIGTERM to the worker
    command_2 = start_runtime(fake_backend())
    assert command_2.run("pid").stderr == backend
    assert daemon_status()["pid"] == daemon_pid


def test_front_does_not_import_grpc() -> None:
    code = "import worker_runtime.cli, worker_runtime.daemon.front, worker_runtime.config"
    assert modules_loaded_by(code, ["grpc"]) == []


def test_the_entry_of_the_plain_form_imports_only_what_the_front_needs() -> None:
    """`worker-runtime serve --config FILE` goes from the console script's entry to the
    front without the command line's parser, typing, pathlib, OpenSSL's hashes, asyncio or
    the buck2 package (whose import settles grpcio's tuning): Buck2 waits for all of it."""
    heavy = (
        "argparse", "typing", "pathlib", "_hashlib", "asyncio", "subprocess", "dataclasses",
        "grpc", "worker_runtime.cli", "worker_runtime.config", "worker_runtime.buck2",
    )  # fmt: skip
    code = (
        "import worker_runtime.entry, worker_runtime.daemon.handover, worker_runtime.daemon.front"
    )
    assert modules_loaded_by(code, heavy) == []


def test_the_plain_front_imports_neither_the_config_nor_dataclasses() -> None:
    """`serve --config FILE` (what worker_tool writes) hands the file to a running daemon
    without parsing it: the modules that cost a start most stay out (benchmarks/front_start.py)."""
    code = "import worker_runtime.cli, worker_runtime.daemon.front"
    heavy = ("grpc", "worker_runtime.config", "dataclasses", "subprocess")
    assert modules_loaded_by(code, heavy) == []


#: What a front's start cannot afford before it reaches its daemon: each costs it milliseconds,
#: and Buck2's first request waits for the attach (json and socket import re, enum and
#: selectors; contextlib imports collections; signal imports enum).
FRONT_HEAVY = ("re", "json", "enum", "socket", "selectors", "contextlib", "collections", "signal")

#: Run as `worker-runtime serve --config FILE`: prints the modules of FRONT_HEAVY loaded when
#: the front, attached, first waits for the end of the command, then ends that command.
FRONT_PROBE = """
import os, select, sys
heavy = sys.argv.pop().split(",")
wait = select.select
def waiting(read, write, error, *timeout):
    if not timeout:
        print(sorted(m for m in heavy if m in sys.modules), flush=True)
        os.kill(os.getpid(), 15)  # Buck2's SIGTERM at the end of the command
    return wait(read, write, error, *timeout)
select.select = waiting
from worker_runtime.entry import main
sys.exit(main())
"""


def test_a_front_reaches_its_daemon_without_the_modules_that_cost_its_start(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """From `serve --config FILE` to the wait after the attach, with the daemon running
    (benchmarks/front_start.py), a front imports none of FRONT_HEAVY."""
    start_runtime(fake_backend())  # the daemon, in the same project root
    config = tmp_path / "worker.json"
    config.write_text(json.dumps({"command": fake_backend(), "protocol": "json"}))
    argv = ["serve", "--config", str(config), ",".join(FRONT_HEAVY)]
    result = subprocess.run(
        [sys.executable, "-c", FRONT_PROBE, *argv], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=60, env={**os.environ, "WORKER_SOCKET": str(tmp_path / "w.sock")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "serving" in result.stderr  # it attached before it waited
    assert result.stdout.strip() == "[]"


def test_a_bad_config_is_refused_naming_the_key_with_the_daemon_running(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    running = start_runtime(
        runtime_args=["--config", config_file(tmp_path, command=fake_backend())]
    )
    assert running.run("pid").exit_code == 0  # the daemon is up
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"command": fake_backend(), "multiplx": True}))
    env = dict(os.environ, WORKER_SOCKET=str(tmp_path / "bad.sock"))
    result = subprocess.run(
        [*RUNTIME, "serve", "--config", str(bad)], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "unknown config key `multiplx`" in result.stderr
    assert not (tmp_path / "bad.sock").exists()


def test_daemon_killed_mid_request_fails_clearly_and_next_command_recovers(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    worker = start_runtime(fake_backend())
    backend = int(worker.run("pid").stderr)
    old_daemon = daemon_status()["pid"]
    outcome: list[Any] = []

    def in_flight() -> None:
        try:
            outcome.append(worker.run("sleep", "2", str(started)))
        except WorkerRequestError as exc:
            outcome.append(exc)

    started = tmp_path / "started"
    thread = threading.Thread(target=in_flight)
    thread.start()
    wait_started(started)
    os.kill(old_daemon, signal.SIGKILL)
    thread.join(30)
    assert outcome and isinstance(outcome[0], WorkerRequestError), "the request must fail, not hang"
    assert "see worker logs" in str(outcome[0])
    assert worker.proc is not None and worker.proc.wait(10) == 1
    stderr = worker.stderr()
    assert f"the daemon (pid {old_daemon})" in stderr
    assert "died without saying it would stop" in stderr and "was stopped" not in stderr
    assert "runtime.log" in stderr and "next buck2 command starts a new daemon" in stderr
    assert wait_gone([backend]) == [], "the dead daemon's backend must not outlive it"
    next_command = start_runtime(fake_backend())
    assert next_command.run("echo", "after").stderr == "after"
    assert daemon_status()["pid"] != old_daemon


@pytest.mark.parametrize("how", ["stop command", "SIGTERM"])
def test_a_front_whose_daemon_is_stopped_says_so_after_its_request_is_answered(
    start_runtime: StartRuntime, tmp_path: Path, how: str
) -> None:
    """A daemon stopped on purpose tells its fronts why before it drains their sockets:
    the request in flight is answered, and the front's exit (which Buck2 reports as the
    worker's) says the daemon was stopped and by what, not that it died."""
    worker = start_runtime(fake_backend())
    daemon = daemon_status()["pid"]
    outcome: list[Any] = []
    started = tmp_path / "started"
    thread = threading.Thread(
        target=lambda: outcome.append(worker.run("sleep", "1.5", str(started)))
    )
    thread.start()
    wait_started(started)
    if how == "SIGTERM":
        os.kill(daemon, signal.SIGTERM)
        reason = "it received SIGTERM"
    else:
        stop = subprocess.run([*RUNTIME, "stop"], cwd=REPO_ROOT, capture_output=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        reason = "`worker-runtime stop` asked it to"
    thread.join(30)
    assert outcome and outcome[0].exit_code == 0, "the drain must answer the request"
    assert worker.proc is not None and worker.proc.wait(30) == 1
    stderr = worker.stderr()
    assert f"the daemon (pid {daemon}) serving" in stderr
    assert f"was stopped ({reason}); the requests it had in flight were answered" in stderr
    assert "died" not in stderr and "next buck2 command starts a new daemon" in stderr
    assert wait_gone([daemon], 30) == [], "the stopped daemon must exit"


def test_a_relative_runtime_dir_is_the_same_directory_for_the_daemon(
    start_runtime: StartRuntime, runtime_dir: Path
) -> None:
    """The front took a relative WORKER_RUNTIME_DIR from the project, the daemon (which
    starts in that directory) from there again: it never started, and every worker of
    every command failed."""
    relative = os.path.relpath(runtime_dir, REPO_ROOT)
    worker = start_runtime(fake_backend(), env={"WORKER_RUNTIME_DIR": relative})
    assert worker.run("echo", "served").stderr == "served"
    assert list(runtime_dir.glob("*.sock")), "the daemon's socket is in the directory named"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "--timeout", "nan"], "must be more than 0 seconds"),
        (["status", "--timeout", "-1"], "must be more than 0 seconds"),
        (["stop", "--timeout", "0"], "must be more than 0 seconds"),
        (["logs", "-n", "0"], "must be 1 or more"),  # printed the whole log
    ],
)
def test_bad_numbers_to_the_daemon_commands_are_usage_errors(argv: list[str], message: str) -> None:
    """Each was a traceback (a socket's timeout refuses them) and exit 1, or, for `logs -n
    0`, the whole log."""
    done = subprocess.run(
        [*RUNTIME, *argv], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_two_fronts_starting_at_once_share_one_daemon(
    start_runtime: StartRuntime, runtime_dir: Path
) -> None:
    a = Buck2Worker([*RUNTIME, "serve", "--", *fake_backend()], project_root=REPO_ROOT)
    b = Buck2Worker([*RUNTIME, "serve", "--", *fake_backend()], project_root=REPO_ROOT)
    try:
        a.spawn()
        b.spawn()
        a.wait_ready()
        b.wait_ready()
        assert a.run("echo", "a").stderr == "a" and b.run("echo", "b").stderr == "b"
        assert len(daemon_processes(runtime_dir)) == 1
    finally:
        for worker in (a, b):
            worker.terminate()
            worker.cleanup()


@pytest.mark.parametrize("leftover", ["socket", "file"])
def test_stale_socket_and_state_files_are_cleaned_up(
    start_runtime: StartRuntime, leftover: str
) -> None:
    paths = DaemonPaths.for_project(str(REPO_ROOT))
    paths.directory.mkdir(mode=0o700, exist_ok=True)
    if leftover == "socket":  # what a daemon killed with SIGKILL leaves: nobody listens
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(str(paths.socket))
        dead.close()
    else:
        paths.socket.write_text("not a socket")
    # A state file of a dead daemon of another version of this very project.
    other = {"pid": 999999, "project_root": paths.project_root, "version": "0.0.0-dead",
             "socket": str(paths.directory / "dead.sock")}  # fmt: skip
    (paths.directory / "dead.json").write_text(json.dumps(other))
    worker = start_runtime(fake_backend())
    assert worker.run("echo", "ok").stderr == "ok"


def test_a_front_s_daemon_listens_under_the_version_the_front_looks_for(
    start_runtime: StartRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon worked its version out again from the source files: edited (or
    upgraded) between a front's start and its daemon's, the daemon listened under
    another name and the front waited 30 s for it, then failed. Stood in for by a
    version variable that the daemon's environment alone holds otherwise."""
    monkeypatch.setenv("WORKER_RUNTIME_DAEMON_VERSION", "0.0.1-front")
    paths = DaemonPaths.for_project(str(REPO_ROOT))
    command = daemon_command(paths, RuntimeConfig(command=("x",)))
    assert command[command.index("--daemon-version") + 1] == "0.0.1-front"
    env = dict(os.environ, WORKER_RUNTIME_DAEMON_VERSION="0.0.2-changed-since")
    daemon = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_for(paths.socket.is_socket), "the daemon listens under another name"
        assert daemon_status()["pid"] == daemon.pid
    finally:
        daemon.terminate()
        daemon.wait(30)


def test_a_daemon_whose_directory_is_removed_exits_and_leaves_its_successor_alone(
    start_runtime: StartRuntime, runtime_dir: Path, tmp_path: Path
) -> None:
    """The daemon directory removed under a running daemon (a logout cleaning
    $XDG_RUNTIME_DIR, a temp cleaner): the next command's front started a second daemon,
    and the first, unreachable, lived on to its idle timeout and then removed the
    second's socket and state file, leaving every later front waiting on a lock held by a
    daemon nobody could reach."""
    config = config_file(tmp_path, reclaim_interval_s=0.2)
    old = start_runtime(fake_backend(), ["--config", config])
    assert old.run("echo", "first").stderr == "first"
    first = daemon_status()["pid"]
    shutil.rmtree(runtime_dir)
    # The attached command is still served by its daemon.
    assert old.run("echo", "still").stderr == "still"
    new = start_runtime(fake_backend(), ["--config", config])
    assert new.run("echo", "second").stderr == "second"
    second = daemon_status()["pid"]
    assert second != first
    old.terminate()
    assert wait_gone([first]) == [], "the displaced daemon should exit once its command ends"
    paths = DaemonPaths.for_project(str(REPO_ROOT))
    assert paths.socket.is_socket() and paths.state.exists(), "its successor's files went"
    assert json.loads(paths.state.read_text())["pid"] == second
    assert new.run("echo", "third").stderr == "third"
    assert start_runtime(fake_backend(), ["--config", config]).run("echo", "4").stderr == "4"
    assert daemon_status()["pid"] == second


NOBODY_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect_error": exc.errno})); raise SystemExit
try:
    s.sendall(b'{"op":"status"}\\n')
except OSError:
    pass  # the daemon may refuse and close before we write: its answer is still there
print(s.recv(65536).decode().strip())
"""


def run_as_nobody(socket_path: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "/usr/bin/python3", "-c", NOBODY_CLIENT, str(socket_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


@pytest.mark.needs_root("run a client as another user")
def test_another_uid_is_refused(start_runtime: StartRuntime, runtime_dir: Path) -> None:
    worker = start_runtime(fake_backend())
    worker.run("echo", "warm")
    paths = DaemonPaths.for_project(str(REPO_ROOT))
    # The directory is 0700: another user cannot even reach the socket ...
    assert os.stat(runtime_dir).st_mode & 0o777 == 0o700
    assert run_as_nobody(paths.socket) == {"connect_error": 13}
    # ... and were it reachable, the daemon checks the peer's uid itself.
    os.chmod(runtime_dir, 0o711)
    os.chmod(paths.socket, 0o777)
    try:
        reply = run_as_nobody(paths.socket)
    finally:
        os.chmod(runtime_dir, 0o700)
        os.chmod(paths.socket, 0o600)
    assert reply["ok"] is False and "serves uid 0 only" in reply["error"]
    # Buck2's own socket is only for our uid too: the kernel refuses another uid's
    # connect by the socket's mode (grpc offers no hook to check a peer's uid), even
    # where Buck2 put it in a directory that others can reach.
    assert os.stat(worker.socket_path).st_mode & 0o777 == 0o600
    socket_dir = os.path.dirname(worker.socket_path)
    dir_mode = os.stat(socket_dir).st_mode & 0o777
    os.chmod(socket_dir, 0o755)
    try:
        assert run_as_nobody(Path(worker.socket_path)) == {"connect_error": 13}
    finally:
        os.chmod(socket_dir, dir_mode)
    assert worker.run("echo", "still served").stderr == "still served"


def test_open_runtime_dir_is_refused(runtime_dir: Path, start_runtime: StartRuntime) -> None:
    os.chmod(runtime_dir, 0o755)
    worker = Buck2Worker([*RUNTIME, "serve", "--", *fake_backend()], project_root=REPO_ROOT)
    try:
        worker.spawn()
        assert worker.proc is not None and worker.proc.wait(30) == 2
        assert "open to other users" in worker.stderr()
    finally:
        worker.cleanup()
        os.chmod(runtime_dir, 0o700)


def request_in_flight(
    worker: Buck2Worker, started: Path, *argv: str
) -> tuple[threading.Thread, list[Any]]:
    """Sends ``argv`` (a fake backend's request that makes the file ``started`` as it
    starts) from a thread and returns once it is running; the list gets its response,
    or the WorkerRequestError Buck2 would see."""
    outcome: list[Any] = []

    def send() -> None:
        try:
            outcome.append(worker.run(*argv))
        except WorkerRequestError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    wait_started(started)
    return thread, outcome


def test_front_killed_mid_request_lets_the_request_finish(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    worker = start_runtime(fake_backend())
    backend = worker.run("pid").stderr
    output = tmp_path / "output.o"
    started = tmp_path / "started"
    thread, outcome = request_in_flight(
        worker, started, "sleep-write", "1", str(output), str(started)
    )
    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGKILL)
    thread.join(30)
    # Buck2 gives up on the request when its worker process exits ...
    assert outcome and isinstance(outcome[0], WorkerRequestError)
    assert "Worker exited while running command" in str(outcome[0])
    # ... but the daemon finishes it: its output is written and the backend stays warm.
    assert wait_for(output.exists)
    next_command = start_runtime(fake_backend())
    assert next_command.run("pid").stderr == backend


def test_sigterm_with_a_request_in_flight_ends_the_front_at_once(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """Buck2's SIGTERM ends the front at once, whatever is in flight (it used to wait
    for the daemon's drain, up to the 5 s grace): the request fails for Buck2 as a worker
    exit does, and the daemon still finishes it and keeps the backend warm."""
    worker = start_runtime(fake_backend())
    backend = worker.run("pid").stderr
    output = tmp_path / "output.o"
    started = tmp_path / "started"
    thread, outcome = request_in_flight(
        worker, started, "sleep-write", "5", str(output), str(started)
    )
    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGTERM)  # as Buck2 ends a command
    assert worker.proc.wait(30) == 0
    assert not output.exists()  # the front is gone while its request still runs
    thread.join(30)
    assert outcome and isinstance(outcome[0], WorkerRequestError)
    assert wait_for(output.exists)
    assert start_runtime(fake_backend()).run("pid").stderr == backend


def test_front_killed_during_a_long_request_cancels_it_cleanly(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    config = config_file(tmp_path, shutdown_grace_s=0.5)
    worker = start_runtime(fake_backend(), ["--config", config])
    backend = int(worker.run("pid").stderr)

    def long_request() -> None:
        with contextlib.suppress(WorkerRequestError):  # Buck2 gives up when the front dies
            worker.run("sleep", "30", str(started))

    started = tmp_path / "started"
    thread = threading.Thread(target=long_request)
    thread.start()
    wait_started(started)
    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGKILL)
    # Past the grace the daemon cancels the request; a singleplex backend in the middle
    # of one cannot be left in an unknown state, so it is stopped.
    assert wait_gone([backend]) == []
    thread.join(30)
    assert wait_for(lambda: daemon_status()["totals"]["in_flight"] == 0)
    next_command = start_runtime(fake_backend(), ["--config", config])
    assert int(next_command.run("pid").stderr) != backend


def config_file(tmp_path: Path, **settings: Any) -> str:
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.json"
    path.write_text(json.dumps(settings))
    return str(path)


def test_memory_budget_stops_idle_backends_largest_first(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    # Alone, each fits the budget; together they do not. The big one (idle by then) is
    # the largest idle backend, so it goes first, and that is enough.
    config = config_file(tmp_path, memory_budget_mb=150, reclaim_interval_s=0.2, key_env=["SIZE"])
    big = start_runtime(fake_backend("--alloc-mb", "110"), ["--config", config])
    big_pid = big.execute(make_command(["pid"], env={"SIZE": "big"})).stderr
    medium = start_runtime(fake_backend("--alloc-mb", "50"), ["--config", config])
    medium_pid = medium.execute(make_command(["pid"], env={"SIZE": "medium"})).stderr
    assert wait_for(lambda: daemon_status()["evictions"] >= 1)
    assert wait_gone([int(big_pid)]) == []
    assert {str(b["pid"]) for b in daemon_status()["backends"]} == {medium_pid}
    log = Path(daemon_status()["log_dir"], "runtime.log").read_text()
    assert "over memory_budget_mb = 150" in log


def test_backend_over_its_own_limit_is_recycled(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    config = config_file(tmp_path, backend_memory_limit_mb=60, reclaim_interval_s=0.2)
    worker = start_runtime(fake_backend("--alloc-mb", "100"), ["--config", config])
    first = worker.run("pid").stderr
    assert wait_gone([int(first)]) == []
    assert worker.run("pid").stderr != first
    log = Path(daemon_status()["log_dir"], "runtime.log").read_text()
    assert "over backend_memory_limit_mb = 60" in log


def test_a_chatty_backend_s_log_stays_under_its_cap(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """A daemon lives for days: a backend that writes a lot to stderr has its log cut back
    to the cap (the latest part kept in .1), and the logs are private to the user."""
    config = config_file(tmp_path, log_cap_mb=1, reclaim_interval_s=0.2)
    worker = start_runtime(fake_backend(), ["--config", config])
    for _ in range(40):  # 40 x 10,000 lines of 71 bytes: about 27 MiB in all
        assert worker.run("chatter", "10000").stderr == "chattered"
    status = daemon_status()
    log_dir = Path(status["log_dir"])
    (log,) = log_dir.glob("backend-*.log")
    assert wait_for(lambda: log.stat().st_size <= 1 << 20), log.stat().st_size
    kept = log.with_name(log.name + ".1")
    assert 0 < kept.stat().st_size <= 1 << 20
    assert kept.read_text().splitlines()[-1].startswith("fake_worker: chatter")
    assert worker.run("echo", "still served").stderr == "still served"
    for path in (log_dir, log, kept, log_dir / "runtime.log"):
        assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))


def test_idle_backends_and_idle_daemon_stop(
    start_runtime: StartRuntime, tmp_path: Path, runtime_dir: Path
) -> None:
    config = config_file(
        tmp_path, backend_idle_timeout_s=0.5, daemon_idle_timeout_s=1.5, reclaim_interval_s=0.2
    )
    worker = start_runtime(fake_backend(), ["--config", config])
    backend = int(worker.run("pid").stderr)
    assert wait_gone([backend]) == []
    assert daemon_status()["backends"] == []
    daemon = daemon_status()["pid"]
    worker.terminate()
    assert wait_gone([daemon]) == [], "the idle daemon should have exited"
    assert daemon_processes(runtime_dir) == []


def test_new_version_gets_its_own_daemon_and_the_old_one_retires(
    start_runtime: StartRuntime, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_RUNTIME_DAEMON_VERSION", "0.0.1-old")
    old = start_runtime(fake_backend())
    old_backend = int(old.run("pid").stderr)
    old_daemon = daemon_status()["pid"]
    old.terminate()
    monkeypatch.setenv("WORKER_RUNTIME_DAEMON_VERSION", "0.0.2-new")
    new = start_runtime(fake_backend())
    assert int(new.run("pid").stderr) != old_backend
    assert daemon_status()["pid"] != old_daemon
    assert wait_gone([old_daemon, old_backend]) == [], "the old daemon should drain and exit"


def test_stop_also_stops_the_projects_daemon_of_an_earlier_install(
    start_runtime: StartRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an upgrade (or an edit of an editable install) `stop` looked only for a
    daemon of its own version, said none ran, and left the old one serving."""
    monkeypatch.setenv("WORKER_RUNTIME_DAEMON_VERSION", "0.0.1-old")
    old = start_runtime(fake_backend())
    old.run("echo", "x")
    old_daemon = daemon_status()["pid"]
    old.terminate()
    monkeypatch.setenv("WORKER_RUNTIME_DAEMON_VERSION", "0.0.2-new")
    stopped = subprocess.run(
        [*RUNTIME, "stop"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped daemon pid {old_daemon} (runtime version 0.0.1-old" in stopped.stdout
    assert wait_gone([old_daemon]) == []


def test_status_stop_and_logs_commands(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend())
    worker.run("echo", "x")
    worker.run("echo", "y")
    table = subprocess.run(
        [*RUNTIME, "status"], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT
    )
    assert table.returncode == 0
    assert "daemon pid" in table.stdout and "RSS MiB" in table.stdout and "total" in table.stdout
    status = daemon_status()
    (backend,) = status["backends"]
    assert (
        backend["requests_served"] == 2 and backend["tool"] == "python" and backend["rss_bytes"] > 0
    )
    assert status["totals"]["backends"] == 1 and len(status["attachments"]) == 1
    logs = subprocess.run(
        [*RUNTIME, "logs"], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT
    )
    assert logs.returncode == 0 and "runtime.log" in logs.stdout and "attached" in logs.stdout
    # Each line formatted once (by the file's writer thread, not also by the queue's end).
    assert "INFO worker_runtime.daemon.server: attached" in logs.stdout
    assert "INFO:worker_runtime" not in logs.stdout
    worker.terminate()
    stop = subprocess.run(
        [*RUNTIME, "stop"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert stop.returncode == 0 and f"stopped daemon pid {status['pid']}" in stop.stdout
    assert wait_gone([backend["pid"]]) == []
    gone = subprocess.run(
        [*RUNTIME, "status"], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT
    )
    assert gone.returncode == 1 and "no worker-runtime daemon runs" in gone.stdout


def test_status_and_stop_of_a_daemon_that_does_not_answer(start_runtime: StartRuntime) -> None:
    """A stopped (SIGSTOP) daemon accepts connections but never answers: `status` says so
    and what to do, and `stop` ends it."""
    worker = start_runtime(fake_backend())
    worker.run("echo", "x")
    pid = daemon_status()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        table = subprocess.run(
            [*RUNTIME, "status", "--timeout", "1"],
            capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
        )  # fmt: skip
        assert table.returncode == 2 and "Traceback" not in table.stderr, table.stderr
        assert f"daemon pid {pid} accepted the connection but did not answer within 1 s" in (
            table.stderr
        )
        assert "worker-runtime stop" in table.stderr and f"kill {pid}" in table.stderr
        shown = subprocess.run(
            [*RUNTIME, "status", "--json", "--timeout", "1"],
            capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
        )  # fmt: skip
        assert json.loads(shown.stdout)["answering"] is False
        stop = subprocess.run(
            [*RUNTIME, "stop", "--timeout", "1"],
            capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
        )  # fmt: skip
        assert stop.returncode == 0 and f"daemon pid {pid} did not answer" in stop.stdout
        assert wait_gone([pid]) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    # The front's daemon is gone: Buck2 sees its worker fail, and the next command starts
    # a new daemon.
    assert start_runtime(fake_backend()).run("echo", "again").stderr == "again"


@contextlib.contextmanager
def stand_in_daemon(stopping: bool) -> Iterator[tuple[subprocess.Popen[bytes], DaemonPaths]]:
    """What `stop` sees of a daemon, without one: the project's lock held, a state file
    naming a live pid (``sleep``) and saying whether it is stopping; the test makes the
    socket. Everything goes at the end."""
    paths = DaemonPaths.for_project(str(REPO_ROOT))
    paths.directory.mkdir(mode=0o700, exist_ok=True)
    held = lock.take(paths)
    assert held is not None
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        paths.state.write_text(json.dumps({"pid": stand_in.pid, "stopping": stopping}))
        yield stand_in, paths
    finally:
        held.close()
        stand_in.kill()
        stand_in.wait()


def test_stop_waits_for_a_stopping_daemon_that_closes_the_connection(tmp_path: Path) -> None:
    """A daemon closing its socket as it begins to stop resets a connection waiting on
    it; `stop` took that for a daemon that does not answer and SIGKILLed it, mid-drain.
    Here the daemon is a stand-in: the lock held, a state file saying it is stopping,
    a socket that closes every connection unanswered, a live pid."""
    with (
        stand_in_daemon(stopping=True) as (stand_in, paths),
        socket.socket(socket.AF_UNIX) as listener,
    ):
        listener.bind(str(paths.socket))
        listener.listen()

        def close_every_connection() -> None:
            with contextlib.suppress(OSError):
                while True:
                    listener.accept()[0].close()

        threading.Thread(target=close_every_connection, daemon=True).start()
        stop = subprocess.run(
            [*RUNTIME, "stop", "--timeout", "1"],
            capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
        )  # fmt: skip
        assert stand_in.poll() is None, f"a stopping daemon was killed: {stop.stdout}"
        assert stop.returncode == 1, stop
        assert "holds its lock and has neither answered nor exited within 1 s" in stop.stderr
        assert f"end it with `kill -9 {stand_in.pid}`" in stop.stderr


def test_stop_of_a_starting_daemon_that_does_not_exit_says_so(tmp_path: Path) -> None:
    """`stop` found a daemon starting (the lock held, no socket yet), asked it once it
    listened, and it did not exit in time: a traceback, where the same case of a daemon
    already listening gets one line. Stand-in: a lock, a state file, a socket that appears
    late and answers `stop` with a pid that goes on running."""
    with (
        stand_in_daemon(stopping=False) as (stand_in, paths),
        socket.socket(socket.AF_UNIX) as listener,
    ):

        def listen_late() -> None:
            time.sleep(0.3)
            listener.bind(str(paths.socket))
            listener.listen()
            with contextlib.suppress(OSError):
                while True:
                    conn = listener.accept()[0]
                    conn.recv(4096)
                    conn.sendall(json.dumps({"ok": True, "pid": stand_in.pid}).encode() + b"\n")
                    conn.close()

        threading.Thread(target=listen_late, daemon=True).start()
        stop = subprocess.run(
            [*RUNTIME, "stop", "--timeout", "2"],
            capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
        )  # fmt: skip
        assert stop.returncode == 1 and "Traceback" not in stop.stderr, stop.stderr
        assert f"daemon pid {stand_in.pid} still runs after" in stop.stderr


def test_front_starting_while_the_daemon_stops_gets_a_new_daemon(
    start_runtime: StartRuntime, log_dir: Path, tmp_path: Path
) -> None:
    """It waits for the stopping daemon to let its lock go, then starts one. Fronts once
    spawned daemon after daemon meanwhile (each lost the lock, having made a log
    directory: hundreds while a daemon drained for long), and `status` said none ran."""
    worker = start_runtime(fake_backend())
    old_daemon = daemon_status()["pid"]
    started = tmp_path / "started"
    thread = threading.Thread(target=lambda: worker.run("sleep", "3", str(started)))
    thread.start()
    wait_started(started)
    stopper = subprocess.Popen([*RUNTIME, "stop"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    assert wait_for(lambda: daemon_status().get("stopping"), 5), "status never said stopping"
    assert daemon_status() == {"running": True, "stopping": True, "pid": old_daemon}
    new = start_runtime(fake_backend())
    assert new.run("echo", "fresh").stderr == "fresh"
    assert daemon_status()["pid"] != old_daemon
    assert stopper.wait(30) == 0
    thread.join(30)
    daemons = sorted(p.name for p in log_dir.iterdir() if p.name.startswith("daemon-"))
    assert len(daemons) == 2, daemons  # the old one and the new: no daemon that lost the lock


def test_daemon_never_imports_code_from_the_project(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "worker_runtime").mkdir(parents=True)
    (project / "worker_runtime" / "__init__.py").write_text(
        'raise SystemExit("imported the project copy")\n'
    )
    (project / "psutil.py").write_text('raise SystemExit("imported the project psutil")\n')
    front = [str(Path(sys.executable).parent / "worker-runtime"), "serve", "--", *fake_backend()]
    worker = Buck2Worker(front, project_root=project)
    try:
        worker.start()
        assert worker.run("echo", "clean").stderr == "clean"
    finally:
        worker.terminate()
        worker.cleanup()


def test_what_backends_leave_behind_is_reaped_by_the_next_daemon(
    start_runtime: StartRuntime,
) -> None:
    worker = start_runtime(fake_backend("--spawn-helper"))
    backend = int(worker.run("pid").stderr)
    helper = int(worker.run("helper-pid").stderr)
    daemon = daemon_status()["pid"]
    os.kill(daemon, signal.SIGKILL)
    assert wait_gone([backend]) == []
    assert psutil.pid_exists(helper), "the helper outlives a killed daemon by itself"
    worker.proc.wait(10) if worker.proc else None
    next_command = start_runtime(fake_backend("--spawn-helper"))
    assert next_command.run("echo", "x").stderr == "x"
    assert wait_gone([helper]) == [], "the next daemon should kill what the dead one left"
    log = Path(daemon_status()["log_dir"], "runtime.log").read_text()
    assert f"killing pid {helper}" in log


def test_a_retiring_daemon_still_serves_its_own_version(
    start_runtime: StartRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_RUNTIME_DAEMON_VERSION", "0.0.1-old")
    long_running = start_runtime(fake_backend())
    long_running.run("echo", "x")
    old_daemon = daemon_status()["pid"]
    monkeypatch.setenv("WORKER_RUNTIME_DAEMON_VERSION", "0.0.2-new")
    start_runtime(fake_backend()).run("echo", "new")  # asks the old daemon to retire
    monkeypatch.setenv("WORKER_RUNTIME_DAEMON_VERSION", "0.0.1-old")
    late = start_runtime(fake_backend())
    assert late.run("echo", "still served").stderr == "still served"
    assert daemon_status()["pid"] == old_daemon
    assert daemon_status()["retiring_for"] == "0.0.2-new"
    long_running.terminate()
    late.terminate()
    assert wait_gone([old_daemon]) == [], "once idle, the retired daemon exits"


def test_busy_backend_over_its_limit_finishes_its_request_first(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    config = config_file(tmp_path, backend_memory_limit_mb=60, reclaim_interval_s=0.2)
    worker = start_runtime(fake_backend(), ["--config", config])
    first = worker.run("pid").stderr
    response = worker.run("alloc-sleep", "100", "1.5")
    assert (response.exit_code, response.stderr) == (0, "slept")
    assert wait_gone([int(first)]) == []
    assert worker.run("pid").stderr != first


def test_memory_budget_spares_busy_backends(start_runtime: StartRuntime, tmp_path: Path) -> None:
    config = config_file(tmp_path, memory_budget_mb=50, reclaim_interval_s=0.2)
    worker = start_runtime(fake_backend(), ["--config", config])
    first = worker.run("pid").stderr
    response = worker.run("alloc-sleep", "100", "1.0")
    assert (response.exit_code, response.stderr) == (0, "slept")
    log = Path(daemon_status()["log_dir"], "runtime.log").read_text()
    assert "the rest are busy" in log
    assert wait_gone([int(first)]) == [], "once idle, it is evicted"


def test_a_streaming_request_fails_as_a_worker_exit_when_the_front_goes(
    start_runtime: StartRuntime,
) -> None:
    """Buck2 races every request, streaming ones too, against the worker's exit, and fails
    every request after the stream ended at once (worker.rs): the emulator once let a
    streaming request be answered by the daemon after its front had gone, and one sent
    after the stream ended waited forever."""
    worker = start_runtime(fake_backend("--multiplex"), ["--multiplex"])
    front = worker.proc
    assert front is not None

    async def scenario() -> None:
        async with StreamingSession(worker.target, front) as session:
            slow = asyncio.create_task(session.execute(make_command(["sleep", "3"])))
            await asyncio.sleep(0.3)
            os.kill(front.pid, signal.SIGTERM)  # as Buck2 ends a command
            with pytest.raises(WorkerRequestError, match="Worker exited while running command"):
                await slow
            for _ in range(100):  # the daemon drains the socket, then closes the stream
                if session._ended:
                    break
                await asyncio.sleep(0.1)
            with pytest.raises(ConnectionError, match="Stream closed while waiting"):
                await session.execute(make_command(["echo", "late"]))

    asyncio.run(scenario())


def test_a_log_dir_starting_with_a_dash_reaches_the_daemon_as_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passed as two arguments, `--log-dir -logs` read `-logs` as an option: the daemon
    exited 2 at its start and every front failed, where `--no-daemon` worked."""
    paths = DaemonPaths.for_project(str(tmp_path))
    command = daemon_command(paths, RuntimeConfig(command=("x",), log_dir="-logs"))
    taken: list[DaemonPaths] = []
    # Parsed, then it stops as a daemon that finds another holding its lock does.
    monkeypatch.setattr(daemon_commands.lock, "take", lambda held: taken.append(held))
    assert daemon_commands.daemon_main(command[command.index("daemon") + 1 :]) == 0
    assert [held.socket for held in taken] == [paths.socket]
