"""What an action adds to the executor's disk, and the watch that stops one passing its
limit (``--limit-disk``; with tenants a share of the work directory's file system).

An action's usage is what its directory holds beyond what it held when the action
started (its inputs): the blocks allocated to each file and directory (each inode once,
however many names it has, a sparse file by what it really takes), and the number of
entries, since files of no size still use up the file system's inodes. A one-shot
action's stdout and stderr, which the executor keeps in files of its own, count too.

The directory is the tenant's while it is walked: the walk never follows a symlink,
opens one directory at a time, and skips a directory that is no longer the one its
parent listed (a rename or a symlink put in its place mid-walk). A path longer than the
file system lets the executor open (``PATH_MAX``) cannot be measured, and counts as
passing the limit: no build nests that deep.

The watch measures every second while the action runs (less often when the walk is
slow: it spends at most a tenth of its time walking), and once more when the action
ends, so that an action that writes past the limit fails however quickly it does so."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: How often a running action is measured, at most.
CHECK_INTERVAL_S = 1.0
#: At most this share of the watch's time goes to walking.
WALKING_SHARE = 0.1
#: How often the watch looks at the lease's cancel between measures.
_POLL_S = 0.05
#: The most files and directories an action may add under a disk limit.
MAX_NEW_ENTRIES = 1_000_000
#: The share of the work directory's file system each action may fill when the executor
#: runs tenants and the operator set no --limit-disk.
DEFAULT_TENANT_DISK_SHARE = 0.10
_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: The errors of a directory that went away, or was replaced, while it was walked.
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int = 0
    entries: int = 0
    #: Part of the tree could not be measured (a path past PATH_MAX).
    unmeasurable: str = ""


def default_tenant_disk_mb(workdir: Path) -> int:
    """DEFAULT_TENANT_DISK_SHARE of the size of the file system that holds (or will
    hold: its nearest existing parent's) ``workdir``."""
    existing = next((p for p in (workdir, *workdir.absolute().parents) if p.exists()), workdir)
    info = os.statvfs(existing)
    return max(1, int(info.f_blocks * info.f_frsize * DEFAULT_TENANT_DISK_SHARE) >> 20)


def measure(
    root: Path, stop_past: Usage | None = None, interrupted: Callable[[], bool] = lambda: False
) -> Usage | None:
    """What ``root`` holds (never through a symlink). Stops early once past either of
    ``stop_past``'s figures (the result is then past it too); None when ``interrupted``
    says so between directories."""
    seen: set[tuple[int, int]] = set()
    total = entries = 0
    try:
        top = os.lstat(root)
    except OSError as exc:
        if exc.errno in _GONE:
            return Usage()
        raise
    pending = [(str(root), top.st_dev, top.st_ino)]
    total += top.st_blocks * 512
    while pending:
        if interrupted():
            return None
        path, device, inode = pending.pop()
        try:
            fd = os.open(path, _OPEN_DIRECTORY)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return Usage(total, entries, f"a path of more than {len(path) - 1} bytes")
            if exc.errno in _GONE or exc.errno == errno.EACCES:
                continue  # gone or replaced by a symlink; unreadable (no tenants: the operator's)
            raise
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (device, inode):
                continue  # not the directory its parent listed
            with os.scandir(fd) as listing:
                for entry in listing:
                    entries += 1
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError as exc:
                        if exc.errno in _GONE:
                            continue
                        raise
                    key = (info.st_dev, info.st_ino)
                    if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                        if key in seen:
                            continue
                        seen.add(key)
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        pending.append((f"{path}/{entry.name}", info.st_dev, info.st_ino))
        finally:
            os.close(fd)
        if stop_past is not None and (total > stop_past.bytes or entries > stop_past.entries):
            break
    return Usage(total, entries)


class DiskWatch:
    """Measures an action's directory while it runs (a thread of its own) and says when
    it passed ``limit_bytes`` or MAX_NEW_ENTRIES: ``stop`` is then set, as it is when
    the lease is cancelled (a persistent worker's call waits on it in place of the
    cancel). ``extra``: bytes the action fills outside its directory (its stdout and
    stderr files). ``kept``: a directory the action shares with others, and what it held
    at its start (a persistent worker's home, whose growth over the worker's life counts
    against each of its requests)."""

    def __init__(
        self,
        directory: Path,
        limit_bytes: int,
        cancelled: threading.Event,
        extra: Callable[[], int] = lambda: 0,
        kept: tuple[Path, Usage] | None = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.cancelled = cancelled
        self.extra = extra
        self.stop = threading.Event()
        #: What the action passed, once it has ("" until then).
        self.passed = ""
        self._done = threading.Event()
        baseline = measure(directory)
        assert baseline is not None
        #: Each directory measured, with what it held at the start.
        self.roots = [(directory, baseline), *([kept] if kept is not None else [])]
        self._thread = threading.Thread(target=self._watch, name="disk-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Ends the watch: its thread is woken, and gone once this returns (at most the
        listing of one directory later), so that what it reads may be closed."""
        self._done.set()
        self._thread.join()

    def _check(self, interrupted: Callable[[], bool] = lambda: False) -> None:
        added_bytes, added_entries = self.extra(), 0
        for root, baseline in self.roots:
            bound = Usage(baseline.bytes + self.limit_bytes, baseline.entries + MAX_NEW_ENTRIES)
            usage = measure(root, bound, interrupted)
            if usage is None:
                return
            if usage.unmeasurable:
                self.passed = f"its directory nests too deep to measure ({usage.unmeasurable})"
                self.stop.set()
                return
            added_bytes += usage.bytes - baseline.bytes
            added_entries += usage.entries - baseline.entries
        if added_entries > MAX_NEW_ENTRIES:
            self.passed = f"it made more than {MAX_NEW_ENTRIES:,} files and directories"
        elif added_bytes > self.limit_bytes:
            self.passed = f"it wrote more than {self.limit_bytes >> 20:,} MB"
        else:
            return
        self.stop.set()

    def _watch(self) -> None:
        due = time.monotonic() + CHECK_INTERVAL_S
        while not self._done.wait(_POLL_S):
            if self.cancelled.is_set():
                self.stop.set()
                return
            if time.monotonic() < due:
                continue
            began = time.monotonic()
            with contextlib.suppress(OSError):  # measured again at the end, which raises it
                self._check(lambda: self._done.is_set() or self.cancelled.is_set())
            if self.passed:
                return
            spent = time.monotonic() - began
            due = time.monotonic() + max(CHECK_INTERVAL_S, spent / WALKING_SHARE)

    def finish(self) -> str:
        """Ends the watch and measures once more: what the action passed, or ""."""
        self.close()
        if not self.passed:
            self._check()
        return self.passed
