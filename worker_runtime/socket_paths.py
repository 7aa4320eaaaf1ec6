"""Checks on the Unix socket path Buck2 gives a worker (WORKER_SOCKET), shared by the
in-process server, the daemon and the front (which must not import grpc, nor the buck2
package, whose import settles grpcio's tuning; nor ``socket``, whose own imports cost a
front's start: ``_socket`` does here)."""

from __future__ import annotations

import _socket
import errno
import os

from worker_runtime.errors import ConfigError

#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def check_socket_length(path: str) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"WORKER_SOCKET is {len(os.fsencode(path))} bytes long; a Unix socket path may have "
            f"at most {MAX_SOCKET_PATH}: {path}"
        )


def bind_private(sock: _socket.socket, path: str) -> None:
    """Binds ``sock`` at ``path`` so that only this user may connect (connecting to a Unix
    socket needs write permission): the umask is 0177 for the bind alone, with nothing
    awaited meanwhile, so no other task or child runs under it."""
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)


def check_socket_path(path: str) -> None:
    """Fails clearly on a path that cannot be bound, or that a live server already holds."""
    check_socket_length(path)
    if not os.path.lexists(path):
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        return
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOTSOCK, errno.ENOENT):
            raise
        os.unlink(path)  # a stale socket (or file) from a dead process
        return
    finally:
        probe.close()
    raise ConfigError(f"another process is already serving WORKER_SOCKET {path}")
