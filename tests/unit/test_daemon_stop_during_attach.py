"""An attach whose server starts while the daemon begins to stop: the shutdown has taken
the attachments to drain already, so the attach must not register (nothing would drain
or stop its server), and the shutdown waits for it to stop that server (else the daemon
exits with the server mid-start). Against the real Daemon and servers, the stop landing
inside the server's start."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

import worker_runtime.daemon.server as daemon_server
from tests.conftest import fake_backend
from worker_runtime.buck2.server import SocketServer
from worker_runtime.daemon.paths import DaemonPaths
from worker_runtime.daemon.server import Daemon, DaemonSettings


@pytest.mark.parametrize("server", ["h2", "grpcio"])
def test_an_attach_that_starts_as_the_daemon_stops_is_refused_and_its_server_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    (tmp_path / "project").mkdir()
    paths = DaemonPaths(str(tmp_path), str(tmp_path / "project"), "test")
    socket_path = str(tmp_path / "w.sock")
    # The h2 server takes the socket the front listens on (as the plain form hands it
    # over); grpcio binds its own.
    front: socket.socket | None = None
    if server == "h2":
        front = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        front.bind(socket_path)
        front.listen()
    started: list[SocketServer] = []
    running = asyncio.Event()  # bound to the loop that first waits on it
    real_socket_server = daemon_server.socket_server

    def socket_server_stopped_during_start(*args: Any) -> SocketServer:
        made = real_socket_server(*args)
        start = made.start

        async def start_as_the_daemon_stops() -> None:
            await start()
            started.append(made)
            running.set()
            await asyncio.sleep(0.2)  # the stop lands here (the test's shutdown below)

        made.start = start_as_the_daemon_stops  # type: ignore[method-assign]
        return made

    monkeypatch.setattr(daemon_server, "socket_server", socket_server_stopped_during_start)
    lock = open(tmp_path / "lock", "a+")  # noqa: SIM115 - closed below

    async def scenario() -> tuple[dict[str, Any], object, int]:
        daemon = Daemon(paths, DaemonSettings(3600, 1 << 40, 5, 1), tmp_path, lock)
        message = {
            "op": "attach", "socket": socket_path, "env": {"PATH": os.environ["PATH"]},
            "config": {"command": fake_backend(), "server": server}, "front_pid": os.getpid(),
        }  # fmt: skip
        fds = []
        if front is not None:
            message["listener"] = True
            fds.append(os.dup(front.fileno()))
        attach = asyncio.create_task(daemon._attach(message, fds))
        await running.wait()
        daemon._stop_for("the test stopped it")
        await daemon._shutdown()  # it takes the attachments: none yet
        # ...and waits for the attach, which would otherwise be cut off when the daemon
        # exits, its server mid-start.
        assert attach.done(), "the shutdown did not wait for the attach still starting"
        reply, attachment = await attach
        if front is not None:  # the daemon's copy of the listener is closed
            assert not started[0]._server.is_serving()  # type: ignore[attr-defined]
        return reply, attachment, len(daemon.attachments)

    try:
        reply, attachment, attached = asyncio.run(scenario())
    finally:
        lock.close()
    assert reply == {"ok": False, "retry": True, "error": "this daemon is stopping"}
    assert attachment is None and attached == 0
    if front is None:
        # The daemon bound the path itself: removed with its server.
        assert not os.path.exists(socket_path)
        return
    # The front's path stays, and its listener is no longer served by the daemon: a
    # connection waits for the front (which offers the socket to the next daemon).
    try:
        assert os.path.exists(socket_path)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(socket_path)
        front.settimeout(5)
        accepted, _ = front.accept()
        accepted.close()
        client.close()
    finally:
        front.close()
