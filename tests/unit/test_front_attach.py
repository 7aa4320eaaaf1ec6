"""A front whose daemon takes the connection and never answers (stopped, stuck): the
front fails at once with what to do, rather than retrying into a config error."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from worker_runtime.config import RuntimeConfig
from worker_runtime.daemon import front
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
