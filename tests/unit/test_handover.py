"""The worker socket a front listens on before anything else and hands to the daemon
(daemon/handover.py), and the control messages that carry it (daemon/control.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.imports import modules_loaded_by
from worker_runtime.daemon import handover, refusal
from worker_runtime.daemon.control import (
    MAX_LINE,
    ControlClient,
    encode,
    read_first_message,
)
from worker_runtime.daemon.handover import MAX_FDS, adopt, listen_early, take_early, withdraw


@pytest.fixture(autouse=True)
def no_early_socket() -> Iterator[None]:
    yield
    leftover = handover._early
    handover._early = None
    if leftover is not None:
        leftover[1].close()


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_the_early_socket_takes_a_connection_before_anyone_accepts_it(tmp_path: Path) -> None:
    path = str(tmp_path / "worker.sock")
    listen_early(path)
    assert take_early(str(tmp_path / "other.sock")) is None
    early = take_early(path)
    assert early is not None and take_early(path) is None  # handed out once
    listener = socket.socket(fileno=early.detach())  # as the daemon's adopt makes it
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600  # only our user may connect
        with socket.socket(socket.AF_UNIX) as buck2:
            buck2.connect(path)  # Buck2's poll succeeds: the connection waits in the queue
            buck2.sendall(b"PRI")
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.recv(3) == b"PRI"
    finally:
        listener.close()


def test_the_early_socket_is_made_without_the_socket_module(tmp_path: Path) -> None:
    """`socket` imports `enum` and `selectors`: the front listens before it pays for them."""
    code = (
        "import os, sys; from worker_runtime.daemon.handover import listen_early; "
        "listen_early(sys.argv[1]); assert os.path.exists(sys.argv[1])"
    )
    path = str(tmp_path / "w.sock")
    assert modules_loaded_by(code, ["socket", "enum", "selectors"], path) == []


def test_a_path_that_cannot_be_bound_is_left_to_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "worker.sock"
    path.write_text("someone else's")
    listen_early(str(path))
    assert take_early(str(path)) is None
    assert path.read_text() == "someone else's"
    listen_early("/tmp/" + "x" * 120 + "/socket")  # too long for a Unix socket
    assert handover._early is None


def test_withdraw_removes_the_path_and_refuses_the_waiting_connection(tmp_path: Path) -> None:
    path = str(tmp_path / "worker.sock")
    listen_early(path)
    listener = take_early(path)
    assert listener is not None
    buck2 = socket.socket(socket.AF_UNIX)
    buck2.connect(path)
    withdraw(listener, path)
    assert not os.path.exists(path)
    buck2.settimeout(5)
    with buck2, contextlib.suppress(ConnectionResetError):
        assert buck2.recv(1) == b""  # the worker is gone, as Buck2 then reports
    withdraw(listener, path)  # again: nothing left to do, no error


def test_adopt_takes_a_listening_socket_bound_to_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "worker.sock")
    listen_early(path)
    listener = take_early(path)
    assert listener is not None
    try:
        adopted = adopt(os.dup(listener.fileno()), path)
        with adopted:
            assert adopted.getblocking() is False
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)
    finally:
        listener.close()


def test_adopt_refuses_anything_else_and_closes_it(tmp_path: Path) -> None:
    path = str(tmp_path / "worker.sock")
    bound_only = socket.socket(socket.AF_UNIX)
    bound_only.bind(path)
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(tmp_path / "other.sock"))
    other.listen()
    tcp = socket.socket(socket.AF_INET)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    read_end, write_end = os.pipe()
    cases = {
        "is not a listening Unix stream socket": bound_only,
        "listens on": other,
        "not a listening Unix stream socket": tcp,
    }
    try:
        for reason, sock in cases.items():
            fd = os.dup(sock.fileno())
            with pytest.raises(ValueError, match=reason):
                adopt(fd, path)
            assert not is_open(fd)
        with pytest.raises(ValueError, match="not a socket"):
            adopt(read_end, path)
        assert not is_open(read_end)
    finally:
        for sock in cases.values():
            sock.close()
        os.close(write_end)


def read_first(sock: socket.socket) -> tuple[bytes, list[int]]:
    sock.setblocking(False)
    return asyncio.run(read_first_message(sock))


def test_a_request_carries_its_descriptor_with_its_first_bytes() -> None:
    front, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    with front, daemon:
        client = ControlClient.__new__(ControlClient)
        client.sock = front
        client._buffer = b""
        client.send({"op": "attach", "listener": True}, (write_end,))
        client.send({"op": "detach"})
        first, fds = read_first(daemon)
        assert first.startswith(encode({"op": "attach", "listener": True}))
        assert len(fds) == 1 and fds[0] != write_end
        os.write(fds[0], b"x")  # the daemon's copy is the front's pipe
        assert os.read(read_end, 1) == b"x"
        for fd in (*fds, read_end, write_end):
            os.close(fd)


def test_a_first_message_without_a_newline_ends_with_the_connection() -> None:
    front, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with daemon:
        front.sendall(b'{"op": "st')
        front.close()
        assert read_first(daemon) == (b'{"op": "st', [])


def test_too_many_descriptors_or_bytes_end_the_connection_and_close_them() -> None:
    front, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pipes = [os.pipe() for _ in range(MAX_FDS + 1)]
    with front, daemon:
        socket.send_fds(front, [b"{}\n"], [w for _, w in pipes])
        with pytest.raises(ValueError, match="descriptors"):
            read_first(daemon)
    for read_end, write_end in pipes:
        os.close(write_end)
        assert os.read(read_end, 1) == b""  # no copy of the write end was kept open
        os.close(read_end)
    front, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def babble() -> None:
        with contextlib.suppress(OSError):
            front.sendall(b"x" * (MAX_LINE + 1))

    writer = threading.Thread(target=babble)
    writer.start()
    with pytest.raises(ValueError, match="too long"):
        read_first(daemon)
    daemon.close()
    writer.join(30)
    front.close()


def test_a_refusal_that_cannot_serve_still_closes_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve_refusal takes the early socket's descriptor; if serving it fails, the
    descriptor is closed there, not left to the garbage collector."""
    path = str(tmp_path / "worker.sock")
    listen_early(path)
    early = take_early(path)
    assert early is not None
    fd = early.fileno()

    def no_server(*args: object) -> None:
        raise RuntimeError("no server")

    monkeypatch.setattr(refusal, "H2SocketServer", no_server)
    with pytest.raises(RuntimeError, match="no server"):
        refusal.serve_refusal(early, "the config was refused", [])
    assert not is_open(fd)
