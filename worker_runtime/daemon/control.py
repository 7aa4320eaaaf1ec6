"""The daemon's control protocol: one JSON object per line over its Unix socket.

Fronts send ``attach`` (serve this Buck2 socket with this config) and ``detach``; the
CLI sends ``status``, ``stop``; a newer daemon sends ``retire`` to an older one. Every
request gets one reply ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. One
message is sent unasked: a daemon that stops on purpose sends each attached front
``{"op": "closing", "reason": "..."}`` before it drains the front's socket.
Connections from another uid are refused (SO_PEERCRED).

A connection's first message may carry file descriptors (SCM_RIGHTS, sent with its
bytes): an ``attach`` with ``"listener": true`` carries the Buck2 socket the front
already listens on (daemon/handover.py). The daemon reads that message with
``read_first_message`` and the rest of the connection as a stream.
"""

from __future__ import annotations

import _socket
import os
import struct

from worker_runtime.daemon.handover import MAX_FDS
from worker_runtime.quick_json import dumps, loads

#: mypy takes it as true; typing itself is not imported (it costs a front's start).
TYPE_CHECKING = False
if TYPE_CHECKING:  # asyncio and socket are the daemon's. A front imports neither, nor json
    # or contextlib: with re, enum, selectors and collections, which they import, they
    # cost its start more than the rest of its way to the daemon.
    import asyncio
    import socket
    from typing import Any

#: Largest control message accepted (a config with many tool inputs fits easily).
MAX_LINE = 4 << 20


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    data = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", data)
    return uid


def encode(message: dict[str, Any]) -> bytes:
    return dumps(message).encode("ascii") + b"\n"


class ControlClient:
    """A blocking client connection to a daemon's control socket (``_socket``'s: the front
    makes one at the start of every Buck2 command)."""

    def __init__(self, path: str | os.PathLike[str], timeout_s: float = 30.0) -> None:
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(os.fspath(path))
        except OSError:
            self.sock.close()
            raise
        self._buffer = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        data = encode(message)
        if fds:
            # The descriptors travel with the first bytes; the rest follows plainly.
            rights = struct.pack(f"{len(fds)}i", *fds)
            sent = self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
            data = data[sent:]
        self.sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        """The next reply, or None if the daemon closed the connection."""
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE:
                raise ValueError("control reply too long")
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = loads(line.decode("utf-8"))
        return reply

    def request(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> dict[str, Any]:
        self.send(message, fds)
        reply = self.receive()
        if reply is None:
            raise ConnectionError("the daemon closed the connection without answering")
        return reply

    def close(self) -> None:
        self.sock.close()


def try_connect(path: str | os.PathLike[str], timeout_s: float = 30.0) -> ControlClient | None:
    """A connection to the daemon at ``path``, or None if none listens there; a
    TimeoutError saying so if it listens and takes no connection within ``timeout_s``.
    (A Unix socket whose queue of connections is full refuses at once, EAGAIN: asked
    again until then, as the daemon may be draining it.)"""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client = ControlClient(path, max(0.001, deadline - time.monotonic()))
            client.sock.settimeout(timeout_s)  # what is left was the connect's alone
            return client
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except (BlockingIOError, TimeoutError):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the daemon on {os.fspath(path)} took no connection within "
                    f"{timeout_s:g} s (it is stuck, its queue of connections full); "
                    "`worker-runtime stop` ends it, and the next Buck2 command starts a new one"
                ) from None
            time.sleep(0.01)


async def read_first_message(sock: socket.socket) -> tuple[bytes, list[int]]:
    """The bytes of a new connection read until its first newline came (they may go past
    it; all of them, if the connection ends first), and the descriptors that came with
    them. ``sock`` is non-blocking. Raises ValueError, with every descriptor received closed, if the message
    is longer than MAX_LINE or carries more than MAX_FDS descriptors."""
    import asyncio
    import socket

    loop = asyncio.get_running_loop()
    data = b""
    fds: list[int] = []
    try:
        while b"\n" not in data:
            try:
                chunk, received, flags, _ = socket.recv_fds(sock, 65536, MAX_FDS)
            except BlockingIOError:
                await _readable(loop, sock)
                continue
            fds += received
            if flags & socket.MSG_CTRUNC:
                raise ValueError(f"a control message carried more than {MAX_FDS} descriptors")
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_LINE:
                raise ValueError("control message too long")
    except BaseException:
        close_all(fds)
        raise
    return data, fds


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:  # noqa: SIM105 - not contextlib: a front imports nothing it can do without
            os.close(fd)
        except OSError:
            pass


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
