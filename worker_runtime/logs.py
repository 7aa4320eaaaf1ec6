"""Where the runtime and its backends log, and the set-up of the runtime's own log file.

Each runtime process gets a directory ``<log root>/<timestamp>-<pid>/`` (a daemon's:
``daemon-<timestamp>-<pid>/``) holding
``runtime.log`` and one ``backend-<tool>-<key>-<n>.log`` per backend process. Run
directories older than ``KEEP_DAYS`` are removed when a runtime starts.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.handlers
import os
import queue
import shutil
import stat
import time
from pathlib import Path
from typing import Any

KEEP_DAYS = 7


def log_root(configured: str | None) -> Path:
    """The configured directory, else $WORKER_RUNTIME_LOG_DIR, else the XDG state dir."""
    if configured:
        return Path(configured)
    if os.environ.get("WORKER_RUNTIME_LOG_DIR"):
        return Path(os.environ["WORKER_RUNTIME_LOG_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "buck2-worker-runtime" / "logs"


def prune_old_runs(root: Path, keep_days: float = KEEP_DAYS) -> None:
    """Removes the log directories of runs older than ``keep_days``, except those of a
    process still running: a daemon that serves for weeks without a backend restarting
    adds no file to its directory, whose time then says old (the root is shared by every
    project's runs)."""
    cutoff = time.time() - keep_days * 86400
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff and not _run_alive(entry):
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def _run_alive(directory: Path) -> bool:
    """Whether the process a run directory is named for (``<date>-<time>-<pid>``) still
    runs: that pid runs, and started before the directory's time (a process that took
    the pid over since is not that run)."""
    parts = directory.name.rsplit("-", 3)
    if len(parts) < 3 or not parts[-1].isdigit():
        return False
    pid = int(parts[-1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: running
        pass
    started = _process_start(pid)
    try:
        made = time.mktime(time.strptime(parts[-3][-8:] + parts[-2], "%Y%m%d%H%M%S"))
    except ValueError:
        return True
    return started is None or started <= made + 2


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def unusable_log_dir(exc: OSError) -> str:
    """What to tell the user when this run's log directory cannot be made."""
    return (
        f"the log directory cannot be used: {exc}; set --log-dir, `log_dir` in the "
        "config or WORKER_RUNTIME_LOG_DIR to a writable directory of your own"
    )


def start_run_logging(
    configured: str | None, verbose: bool = False, prefix: str = "", cap_bytes: int | None = None
) -> Path:
    """Creates this run's log directory (private to the user), points the root logger at
    runtime.log, returns the directory. With ``cap_bytes``, runtime.log is cut back as
    ``cap_logs`` does backend logs: past that size it moves to runtime.log.1."""
    root = log_root(configured)
    run_dir = root / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    private_directory(root)
    # Made here, never found: its name is predictable, and in a root others may write to
    # one made before us (with files to read what we log) must not be taken.
    run_dir.mkdir(mode=0o700)
    prune_old_runs(root)
    path = run_dir / "runtime.log"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    handler: logging.Handler
    if cap_bytes:
        handler = _PrivateRotatingFileHandler(
            path, maxBytes=cap_bytes, backupCount=1, encoding="utf-8"
        )
    else:
        handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # The file is written by a thread of its own: a log line never makes the event loop
    # wait on the disk. The lines still queued are written at exit.
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.handlers.QueueListener(records, handler)
    writer.start()
    atexit.register(writer.stop)
    queued = logging.handlers.QueueHandler(records)
    queued.setFormatter(logging.Formatter("%(message)s"))  # the file's handler formats it
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[queued])
    return run_dir


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Opens each runtime.log it starts (after a rollover too) 0600, whatever the umask."""

    def _open(self) -> Any:
        return open(
            private_log_file(Path(self.baseFilename)), "a", encoding=self.encoding,
            errors=self.errors,
        )  # fmt: skip


def private_directory(path: Path) -> None:
    """Creates ``path`` (and its parents) and makes it 0700 if this user owns it: logs
    name the project's files and hold the tools' output. Another user's directory is
    taken only if others cannot replace what is in it: theirs alone, or sticky (/tmp)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid == os.getuid():
        with contextlib.suppress(OSError):
            path.chmod(0o700)
    elif info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise PermissionError(
            f"{path} is uid {info.st_uid}'s, and others may write to it (mode "
            f"{info.st_mode & 0o7777:o}): logs there could be swapped or read"
        )


def private_log_file(path: Path) -> int:
    """Opens (creating it 0600) a log file for appending; returns the descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


#: How much of a log that passed its cap is kept, in ``<name>.1``.
KEPT_FRACTION = 2


def cap_logs(paths: list[Path], cap_bytes: int) -> list[Path]:
    """Cuts back each log file past ``cap_bytes``: its last ``cap_bytes / 2`` bytes move to
    ``<name>.1`` (replacing the one before) and the file is emptied. The writer keeps its
    descriptor: it appends (O_APPEND) at the new end. Lines written between the copy and
    the cut are lost. Returns the files cut."""
    cut = []
    for path in paths:
        try:
            if path.stat().st_size <= cap_bytes:
                continue
            with open(path, "rb") as handle:
                handle.seek(-(cap_bytes // KEPT_FRACTION), os.SEEK_END)
                tail = handle.read()
            kept = path.with_name(path.name + ".1")
            fd = private_log_file(kept)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, tail)
            finally:
                os.close(fd)
            os.truncate(path, 0)
        except OSError as exc:
            logging.getLogger(__name__).warning("could not cut back %s: %s", path, exc)
            continue
        cut.append(path)
    return cut


def latest_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a log, reaching back into ``<name>.1`` if the log was
    cut back recently."""
    lines = path.read_text(errors="replace").splitlines()
    older = path.with_name(path.name + ".1")
    if len(lines) < count and older.exists():
        lines = older.read_text(errors="replace").splitlines() + lines
    return lines[-count:]
