"""A front whose daemon takes the connection and never answers (stopped, stuck): the
front fails at once with what to do, rather than retrying into a config error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from worker_runtime.config import RuntimeConfig
from worker_runtime.daemon import front, lock
from worker_runtime.daemon.control import try_connect
from worker_runtime.daemon.paths import DaemonPaths, private_dir


def no_daemon_is_started() -> RuntimeConfig:
    raise AssertionError("a daemon listens: none may be started")


def test_a_daemon_that_does_not_answer_the_attach_is_reported_as_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_RUNTIME_DIR", str(tmp_path / "daemons"))
    monkeypatch.setattr(front, "ATTACH_TIMEOUT_S", 0.3)
    monkeypatch.setattr(front, "DAEMON_START_TIMEOUT_S", 1.0)  # bounds the old retries
    paths = DaemonPaths.for_project(str(tmp_path))
    private_dir(paths.directory_name)
    # A socket that takes connections (its backlog) and never reads them: a stopped daemon.
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(paths.socket_name)
    silent.listen()
    try:
        with pytest.raises(front.DaemonStartError) as caught:
            front.attach(paths, {}, no_daemon_is_started, str(tmp_path / "worker.sock"))
    finally:
        silent.close()
        os.unlink(paths.socket_name)
    message = str(caught.value)
    assert "accepted the connection but did not answer within 0.3 s" in message
    assert "`worker-runtime stop`" in message and "closed the connection" not in message


def test_a_front_waits_on_a_stopping_daemon_without_spawning_more_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon holds the lock and no longer listens (draining its last requests): each
    daemon the front spawned lost the lock and exited, and the front spawned the next at
    once, for as long as the drain lasted; then it blamed an empty start-up log."""
    monkeypatch.setenv("WORKER_RUNTIME_DIR", str(tmp_path / "daemons"))
    monkeypatch.setattr(front, "DAEMON_START_TIMEOUT_S", 1.0)
    paths = DaemonPaths.for_project(str(tmp_path))
    private_dir(paths.directory_name)
    stopping = lock.take(paths)  # the stopping daemon's
    assert stopping is not None
    with open(paths.state_name, "w") as state:
        json.dump({"pid": 4242, "stopping": True}, state)
    spawned: list[int] = []

    def spawn(paths: DaemonPaths, config: RuntimeConfig) -> subprocess.Popen[bytes]:
        spawned.append(1)
        return subprocess.Popen(["true"])  # a daemon that lost the lock: exits 0

    monkeypatch.setattr(front, "spawn_daemon", spawn)
    try:
        with pytest.raises(front.DaemonStartError) as caught:
            front.connect_or_start(paths, RuntimeConfig)
    finally:
        stopping.close()
    assert len(spawned) == 1
    message = str(caught.value)
    assert "daemon for this project (pid 4242) is still stopping after 1 s" in message


def test_a_daemon_whose_queue_of_connections_is_full_is_asked_again_then_named(
    tmp_path: Path,
) -> None:
    """A Unix socket with a full queue refuses a connect at once (EAGAIN): the front
    failed with "[Errno 11] Resource temporarily unavailable". It asks again until its
    timeout (the daemon may be draining the queue), then says what is wrong."""
    path = tmp_path / "d.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(0)
    queued = socket.socket(socket.AF_UNIX)
    queued.connect(str(path))  # the queue's one place taken
    try:
        with pytest.raises(TimeoutError, match=r"took no connection within 0\.3 s .*stuck"):
            try_connect(path, 0.3)
        threading.Timer(0.2, lambda: listener.accept()[0].close()).start()
        client = try_connect(path, 10)  # taken once the daemon accepts the queued one
        assert client is not None
        assert client.sock.gettimeout() == 10  # its requests get the whole timeout again
        client.close()
    finally:
        queued.close()
        listener.close()
