"""The processes a cluster started, known by more than their PID: a PID saved in
state.json may since have been reused by an unrelated process, which must never be
signalled. Each is recorded with its start time (/proc/PID/stat field 22, clock ticks
since boot), and its command line must name the cluster's directory."""

from __future__ import annotations

import contextlib
import os
import signal
import time


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is none."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            # Fields after the command name (which may hold spaces and parentheses)
            # start at field 3 (state): field 22 is the 20th of them.
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _command_line(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def is_ours(pid: int, started: int | None = None, marker: str | None = None) -> bool:
    """Whether ``pid`` is still the process recorded: one that started at ``started``
    (when known) and whose command line names ``marker`` (when given)."""
    if pid <= 0:
        return False
    if started is not None and start_time(pid) != started:
        return False
    return marker is None or names_path(_command_line(pid), marker)


def names_path(command_line: bytes, path: str) -> bool:
    """Whether an argument of ``command_line`` (NUL-separated) names ``path`` or a path
    below it, whole or after ``=``, ``:``, a quote or ``scheme://`` (``--x=/c/pg``,
    ``unix:///c/pg/run/sock``): ``/c/pg`` is not named by ``-D /c/pg2``, nor ``/c/`` by
    ``/d/c/``."""
    wanted = os.fsencode(path.rstrip("/") or "/")
    for argument in command_line.split(b"\0"):
        start = argument.find(wanted)
        while start >= 0:
            end = start + len(wanted)
            before = argument[:start]
            starts = before in (b"", b'"', b"'") or before.endswith((b"=", b":", b"://"))
            if starts and argument[end : end + 1] in (b"", b"/", b'"', b"'"):
                return True
            start = argument.find(wanted, start + 1)
    return False


def alive(pid: int, started: int | None = None, marker: str | None = None) -> bool:
    """Whether the recorded process runs (a zombie, or another process that has its
    PID now, counts as gone)."""
    if not is_ours(pid, started, marker):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: not one this cluster started as this user
        return marker is None and started is None
    try:  # a zombie child of this process counts as gone
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop(
    pid: int, grace_s: float = 10.0, started: int | None = None, marker: str | None = None
) -> None:
    """SIGTERM to the process group ``pid`` leads, SIGKILL after ``grace_s``; nothing if
    ``pid`` is no longer the process recorded (see ``is_ours``)."""
    stop_all([(pid, started)], grace_s, marker)


def stop_all(
    recorded: list[tuple[int, int | None]], grace_s: float, marker: str | None = None
) -> None:
    """``stop`` for each (pid, start time) at once: all are sent SIGTERM first, then
    waited for on one deadline (executors each finish or hand back their leases in their
    own grace: one after another, the last took N graces to be asked), SIGKILL for those
    still running after ``grace_s``; a moment is then left for the kill to land."""
    signalled = []
    for pid, started in recorded:
        if not alive(pid, started, marker):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            continue
        signalled.append((pid, started))
    deadline = time.monotonic() + grace_s
    while signalled and time.monotonic() < deadline:
        signalled = [(p, s) for p, s in signalled if alive(p, s, marker)]
        if signalled:
            time.sleep(0.05)
    for pid, _ in signalled:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + _KILLED_WAIT_S
    while signalled and time.monotonic() < deadline:
        signalled = [(p, s) for p, s in signalled if alive(p, s, marker)]
        if signalled:
            time.sleep(0.01)


#: How long a stop waits for the processes it SIGKILLed to be gone (a process exiting
#: frees its memory first: its directory is not to be reused before).
_KILLED_WAIT_S = 5.0
