"""The worker socket the front listens on at once and hands to the daemon
(daemon/handover.py): a connection Buck2 makes before the daemon serves it is served,
and an attach whose socket the daemon cannot serve is refused, keeping nothing open."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO_ROOT, RUNTIME, StartRuntime, fake_backend
from tests.integration.test_daemon import config_file, daemon_status, wait_for
from worker_runtime.buck2.http2 import PREFACE, SETTINGS, frame
from worker_runtime.daemon.control import ControlClient
from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE
from workers_dev.emulator import Buck2Worker, WorkerSpawnError

#: HTTP/2's client preface and an empty SETTINGS frame, as Buck2's channel opens.
CLIENT_PREFACE = PREFACE + frame(SETTINGS, 0, 0)


def connect_when_listening(path: Path, timeout_s: float = 20.0) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def first_frame_type(sock: socket.socket, timeout_s: float = 20.0) -> int:
    sock.settimeout(timeout_s)
    header = b""
    while len(header) < 9:
        chunk = sock.recv(9 - len(header))
        assert chunk, "the connection was closed without an HTTP/2 frame"
        header += chunk
    return header[3]  # a frame header: 3 bytes of length, then the type


def test_a_connection_made_before_the_daemon_serves_the_socket_is_served(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    config = config_file(tmp_path, command=fake_backend())
    start_runtime(runtime_args=["--config", config]).run("pid")  # the daemon is up
    daemon = daemon_status()["pid"]
    socket_path = tmp_path / "worker.sock"
    env = dict(os.environ, WORKER_SOCKET=str(socket_path))
    os.kill(daemon, signal.SIGSTOP)
    front = None
    try:
        front = subprocess.Popen(
            [*RUNTIME, "serve", "--config", config], env=env, cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        # The daemon cannot run, yet the socket takes Buck2's connection: the front listens.
        buck2 = connect_when_listening(socket_path)
        buck2.sendall(CLIENT_PREFACE)
        os.kill(daemon, signal.SIGCONT)
        with buck2:
            assert first_frame_type(buck2) == SETTINGS  # the daemon took the connection over
    finally:
        os.kill(daemon, signal.SIGCONT)
        if front is not None:
            front.terminate()
            _, stderr = front.communicate(timeout=30)
            assert front.returncode == 0, stderr
            assert b"through daemon pid" in stderr


def test_the_daemon_refuses_a_listener_it_cannot_serve_and_keeps_no_descriptor(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    good = {"command": fake_backend()}
    start_runtime(runtime_args=["--config", config_file(tmp_path, **good)]).run("pid")
    status = daemon_status()

    def open_in_daemon() -> int:
        return len(os.listdir(f"/proc/{status['pid']}/fd"))

    open_before = open_in_daemon()
    here = str(tmp_path / "here.sock")
    elsewhere = socket.socket(socket.AF_UNIX)
    elsewhere.bind(str(tmp_path / "elsewhere.sock"))
    elsewhere.listen()
    listening_here = socket.socket(socket.AF_UNIX)
    listening_here.bind(here)
    listening_here.listen()
    read_end, write_end = os.pipe()
    cases = [
        (good, (), "carries one descriptor, not 0"),
        (good, (read_end, write_end), "carries one descriptor, not 2"),
        (good, (read_end,), "not a socket"),
        (good, (elsewhere.fileno(),), "listens on"),
        ({**good, "server": "grpcio"}, (listening_here.fileno(),), 'only server "h2" can'),
    ]
    try:
        for config, fds, error in cases:
            client = ControlClient(Path(status["socket"]))
            try:
                message = {"op": "attach", "socket": here, "config": config, "listener": True}
                reply = client.request(message, fds)
            finally:
                client.close()
            assert not reply["ok"] and error in reply["error"], reply
        # Nothing the refused attaches carried is still open in the daemon, and it serves on.
        # (once the daemon has seen the last connection end)
        assert wait_for(lambda: open_in_daemon() <= open_before), open_in_daemon()
        assert daemon_status()["pid"] == status["pid"]
    finally:
        for sock in (elsewhere, listening_here):
            sock.close()
        os.close(read_end)
        os.close(write_end)


def test_a_plain_front_whose_config_asks_for_grpcio_leaves_the_socket_to_it(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    config = config_file(tmp_path, command=fake_backend(), server="grpcio")
    worker = start_runtime(runtime_args=["--config", config])
    assert worker.run("echo", "hello").exit_code == 0


def test_a_plain_config_without_the_daemon_is_served_in_process(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """`"daemon": false`: the socket the entry listened on is given up before `serve`
    binds it in its own process."""
    config = config_file(tmp_path, command=fake_backend(), daemon=False)
    worker = start_runtime(runtime_args=["--config", config])
    assert worker.run("echo", "in-process").exit_code == 0
    assert worker.proc is not None
    backend = psutil.Process(int(worker.run("pid").stderr))
    assert backend.ppid() == worker.proc.pid  # the serve process's own backend, no daemon


def test_the_emulator_reports_a_worker_that_listens_then_exits_as_buck2_does(
    tmp_path: Path,
) -> None:
    """Buck2 races its connection against the worker's exit: a worker that listens and
    exits before anything answers "exited before connecting", with its stderr, at once
    (the emulator used to wait out its whole connect timeout)."""
    code = (
        "import os, socket, sys, time; s = socket.socket(socket.AF_UNIX); "
        "s.bind(os.environ['WORKER_SOCKET']); s.listen(); time.sleep(0.3); "
        "sys.stderr.write('refused on purpose'); sys.exit(3)"
    )
    worker = Buck2Worker([sys.executable, "-c", code], project_root=tmp_path)
    try:
        with pytest.raises(WorkerSpawnError, match=r"exited before connecting.*refused on purpose"):
            worker.start()
    finally:
        worker.cleanup()


def test_an_attach_refused_after_buck2_connected_answers_buck2_with_the_reason(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """Buck2 connected to the early socket before the daemon refused the config: its
    connection is not reset ("Worker failed to spawn: transport error", and nothing
    else, is what the real Buck2 then prints); each request gets the reason instead."""
    start_runtime(runtime_args=["--config", config_file(tmp_path, command=fake_backend())])
    daemon = daemon_status()["pid"]
    bad = config_file(tmp_path, command=fake_backend(), multiplx=True)
    worker = Buck2Worker([*RUNTIME, "serve", "--config", bad], project_root=REPO_ROOT)
    os.kill(daemon, signal.SIGSTOP)  # the attach waits: Buck2's connection comes first
    resume = threading.Timer(1.0, os.kill, (daemon, signal.SIGCONT))
    resume.start()
    try:
        worker.start()
        response = worker.run("echo", "never runs")
        assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
        assert "unknown config key `multiplx`" in response.stderr
        assert not os.path.exists(worker.socket_path)  # nobody else can connect
        assert worker.terminate() == 2
        assert "unknown config key `multiplx`" in worker.stderr()
    finally:
        resume.cancel()
        os.kill(daemon, signal.SIGCONT)
        worker.cleanup()


def test_the_emulator_fails_a_start_whose_connection_is_reset_as_buck2_does(
    tmp_path: Path,
) -> None:
    """The real Buck2 does not connect again after a reset: a worker that stops listening
    with Buck2's connection in its queue fails the start with "transport error" (found
    when the front gave up a socket Buck2 had connected to)."""
    code = (
        "import os, socket, time; s = socket.socket(socket.AF_UNIX); "
        "s.bind(os.environ['WORKER_SOCKET']); s.listen(); time.sleep(1.0); s.close(); "
        "time.sleep(30)"
    )
    worker = Buck2Worker([sys.executable, "-c", code], project_root=tmp_path)
    try:
        with pytest.raises(WorkerSpawnError, match="failed to spawn: transport error"):
            worker.start()
    finally:
        worker.terminate()
        worker.cleanup()
