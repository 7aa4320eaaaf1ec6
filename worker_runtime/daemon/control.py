"""The daemon's control protocol: one JSON object per line over its Unix socket.

Fronts send ``attach`` (serve this Buck2 socket with this config) and ``detach``; the
CLI sends ``status``, ``stop``; a newer daemon sends ``retire`` to an older one. Every
request gets one reply ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
Connections from another uid are refused (SO_PEERCRED).
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

#: Largest control message accepted (a config with many tool inputs fits easily).
MAX_LINE = 4 << 20


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", data)
    return uid


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


class ControlClient:
    """A blocking client connection to a daemon's control socket."""

    def __init__(self, path: Path, timeout_s: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self._buffer = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

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
        reply: dict[str, Any] = json.loads(line)
        return reply

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        reply = self.receive()
        if reply is None:
            raise ConnectionError("the daemon closed the connection without answering")
        return reply

    def close(self) -> None:
        self.sock.close()


def try_connect(path: Path, timeout_s: float = 30.0) -> ControlClient | None:
    """A connection to the daemon at ``path``, or None if none listens there."""
    try:
        return ControlClient(path, timeout_s)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
