"""The lock that makes one daemon per (user, project root, runtime version): taken by a
daemon before anything else it does (a daemon that loses it exits at once, having made
nothing), held until it has stopped; and asked about by fronts and commands, which must
tell a daemon that is stopping (no socket, the lock held) from none at all.

Imported by every worker front: ``fcntl`` and ``os`` only."""

from __future__ import annotations

import fcntl
import os

from worker_runtime.daemon.paths import DaemonPaths

#: mypy takes it as true; typing is not imported for it (every front imports this).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO


def take(paths: DaemonPaths) -> IO[str] | None:
    """The lock, held until the returned file is closed; None if another daemon holds it.
    Tried a few times over 20 ms: a front or `status` probing it (``held``) holds it for
    an instant, which alone must not turn a starting daemon away."""
    import time

    for attempt in range(5):
        lock = open(paths.lock_name, "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            if attempt < 4:
                time.sleep(0.005)
            continue
        if still_named(lock, paths):
            return lock
        lock.close()  # removed or replaced since it was opened: a lock nobody else sees
    return None


def still_named(lock: IO[str], paths: DaemonPaths) -> bool:
    """Whether the lock's path still names the file ``lock`` holds. Not once its directory
    is removed (a logout's cleaning of ``$XDG_RUNTIME_DIR``, a temp cleaner, an
    ``rm -rf``): the next front then starts a daemon of its own, which takes a lock on a
    new file, and the old daemon must neither stay on nor touch the new one's files."""
    try:
        named = os.stat(paths.lock_name)
    except OSError:
        return False
    held = os.fstat(lock.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def held(paths: DaemonPaths) -> bool:
    """Whether a daemon holds the lock (running, starting or stopping). Asked only when no
    daemon this caller started may be taking it: the probe holds it for an instant."""
    try:
        fd = os.open(paths.lock_name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's own lock, if it got it
    return False


def holder(paths: DaemonPaths) -> tuple[int | None, bool]:
    """The pid the lock's holder wrote in its state file (None if it wrote none yet: it
    is starting), and whether it wrote that it is stopping."""
    import json

    try:
        with open(paths.state_name, encoding="utf-8") as handle:
            state = json.load(handle)
        pid, stopping = state.get("pid"), state.get("stopping") is True
    except (OSError, ValueError, AttributeError):
        return None, False
    return (pid if isinstance(pid, int) else None), stopping
