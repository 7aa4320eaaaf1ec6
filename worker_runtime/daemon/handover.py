"""Buck2's worker socket handed from the front to the daemon, already listening.

Buck2 tries to connect to a worker's socket at once, then 50, 150 and 350 ms after it
spawned it. Under a real build the front's start (the interpreter, its imports, the
daemon's answer) took longer than 50 ms, so Buck2 connected only at 150 ms. Now the
``worker-runtime`` command listens on ``WORKER_SOCKET`` before it imports anything else
(``listen_early``, from ``worker_runtime.entry``); Buck2's connection waits in the
socket's queue until the daemon serves it. The front sends the listening socket with its
``attach`` request (SCM_RIGHTS on the control connection) and closes its own copy once
the daemon has taken it. A socket Buck2 may have connected to is never simply closed:
a reset connection fails the worker's start with only "transport error". If the attach
fails, the front removes the path and answers the connections already made with the
reason (daemon/refusal.py).

This module runs before everything else: it imports only ``os`` and ``_socket`` (the
``socket`` module imports ``enum`` and ``selectors``, which cost a start several
milliseconds), and the front, which goes on with the listening socket, imports no
``socket`` either (daemon/control.py); the daemon's ``adopt`` does.
"""

from __future__ import annotations

import _socket
import os

from worker_runtime.socket_paths import bind_private

TYPE_CHECKING = False  # mypy takes it as true; typing itself is not imported (it costs a start)
if TYPE_CHECKING:
    import socket

#: At most this many descriptors are taken with one control message (a front sends one).
MAX_FDS = 4

#: The path listened on and the socket listening on it.
_early: tuple[str, _socket.socket] | None = None


def listen_early(path: str) -> None:
    """Listens on ``path`` if it can (only our user may connect); the front takes the
    socket with ``take_early``. If it cannot (the path exists, say), nothing is done and
    the daemon binds the path itself, saying why if it cannot either."""
    global _early
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        bind_private(sock, path)
        sock.listen(_socket.SOMAXCONN)
    except (OSError, ValueError):
        sock.close()
        return
    _early = (path, sock)


def take_early(path: str) -> _socket.socket | None:
    """The socket ``listen_early`` made for ``path``, once; None if it made none. It is
    ``_socket``'s, as the front needs only its descriptor (``socket.socket(fileno=
    sock.detach())`` makes it the ``socket`` module's)."""
    global _early
    if _early is None or _early[0] != path:
        return None
    sock = _early[1]
    _early = None
    return sock


def withdraw(sock: _socket.socket, path: str) -> None:
    """Stops listening on ``path`` and removes it (a front that fails unexpectedly): a
    connection waiting in its queue is reset."""
    sock.close()
    try:  # noqa: SIM105 - not contextlib: this module imports nothing it can do without
        os.unlink(path)
    except FileNotFoundError:
        pass


def adopt(fd: int, path: str) -> socket.socket:
    """The listening Unix stream socket bound to ``path`` that a front passed as ``fd``;
    raises ValueError (and closes ``fd``) if it is anything else."""
    import socket

    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        os.close(fd)
        raise ValueError(f"the descriptor passed with the attach is not a socket ({exc})") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        name = sock.getsockname()
    except OSError as exc:
        sock.close()
        raise ValueError(f"the socket passed with the attach cannot be read: {exc}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        sock.close()
        raise ValueError("the socket passed with the attach is not a listening Unix stream socket")
    if name != path:
        sock.close()
        raise ValueError(f"the socket passed with the attach listens on {name!r}, not {path!r}")
    sock.setblocking(False)
    return sock
