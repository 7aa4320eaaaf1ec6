"""What an action adds to the executor's disk, and the watch that stops one passing its
limit (``--limit-disk``; with tenants a share of the work directory's file system).

An action's usage is what its directory holds beyond what it held when the action
started (its inputs): the blocks allocated to each file and directory (each inode once,
however many names it has, a sparse file by what it really takes), and the number of
entries, since files of no size still use up the file system's inodes. A one-shot
action's stdout and stderr, which the executor keeps in files of its own, count too, as
does what a persistent worker's home holds beyond its tool files.

The directory is the tenant's while it is walked: each directory is opened below the
root through no symlink and no mount (openat2; where the kernel lacks it, O_NOFOLLOW on
the last component), one at a time, and skipped if it is no longer the one its parent
listed. A directory the executor may not read (it is not root), or a path longer than
it can open (``PATH_MAX``), counts as passing the limit: no build needs either.

The watch measures every second while the action runs (less often when the walk is
slow, at most a tenth of its time walking, and at least every five seconds), and once
more when the action ends, so that an action that writes past the limit fails however
quickly it does so. It is a walk, not a quota: what it cannot see (a file unlinked and
still held open, a directory moved from a part not yet walked to one already walked,
what a worker writes between requests) it does not count; docs/isolation.md says so."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
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
#: The longest wait between two measures, however slow the walk.
MAX_INTERVAL_S = 5.0
#: How often the watch looks at the lease's cancel between measures.
_POLL_S = 0.05
#: A walk asks whether to stop, and checks its bound, every this many entries.
_LOOK_EVERY = 4096
#: The most files and directories an action may add under a disk limit.
MAX_NEW_ENTRIES = 1_000_000
#: The share of the work directory's file system each action may fill when the executor
#: runs tenants and the operator set no --limit-disk.
DEFAULT_TENANT_DISK_SHARE = 0.10
LOGGER = logging.getLogger(__name__)
_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: The errors of a directory that went away, or was replaced, while it was walked.
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})
#: The errors of what the executor may not read or search (it is not root: the tenant's
#: doing, counted as passing the limit).
_UNREADABLE = frozenset({errno.EACCES, errno.EPERM})


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


class _OpenHow(ctypes.Structure):
    """openat2's ``struct open_how``."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
#: openat2 (Linux 5.6): 437 on the architectures that share the generic numbering
#: (others, alpha, MIPS, ia64, have their own, and take the fallback).
_SYS_OPENAT2 = 437
_GENERIC_NUMBERING = {
    "x86_64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv8l", "riscv64",
    "ppc64le", "ppc64", "s390x", "loongarch64",
}  # fmt: skip
#: RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH: a path
#: below the root, through no symlink and no mount, or an error.
_RESOLVE_INSIDE = 0x01 | 0x02 | 0x04 | 0x08
#: What openat2 fails with where it cannot be used: the kernel lacks it (ENOSYS), a
#: seccomp filter refuses it (EPERM: Docker's default profile on many versions), or it
#: takes another struct (EINVAL, E2BIG).
_UNAVAILABLE = frozenset({errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG})
_openat2 = [platform.machine() in _GENERIC_NUMBERING]


def _open_below(root_fd: int, relative: str) -> int:
    """The directory ``relative`` below ``root_fd``: with openat2 through no symlink or
    mount at all; where it cannot be used, with O_NOFOLLOW on the last component only
    (the caller checks that it is the directory its parent listed)."""
    if _openat2[0]:
        how = _OpenHow(_OPEN_DIRECTORY, 0, _RESOLVE_INSIDE)
        fd = _LIBC.syscall(
            ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(root_fd),
            ctypes.c_char_p(os.fsencode(relative)), ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )  # fmt: skip
        if fd >= 0:
            return int(fd)
        code = ctypes.get_errno()
        if code not in _UNAVAILABLE:
            raise OSError(code, os.strerror(code), relative)
        _openat2[0] = False
        LOGGER.warning(
            "openat2 cannot be used here (%s): the disk limit's walk opens each directory "
            "with O_NOFOLLOW on its last component only",
            os.strerror(code),
        )
    return os.open(relative, _OPEN_DIRECTORY, dir_fd=root_fd)


def measure(
    root: Path, stop_past: Usage | None = None, interrupted: Callable[[], bool] = lambda: False
) -> Usage | None:
    """What ``root`` holds (never through a symlink; with openat2, never through a mount).
    Stops early once past either of ``stop_past``'s figures (the result is then past it
    too); None when ``interrupted`` says so (asked every ``_LOOK_EVERY`` entries)."""
    try:
        root_fd = os.open(root, _OPEN_DIRECTORY)
    except OSError as exc:
        if exc.errno in _GONE:
            return Usage()
        if exc.errno in _UNREADABLE:
            return Usage(unmeasurable=f"it cannot be read ({exc.strerror})")
        raise
    try:
        return _walk(root_fd, stop_past, interrupted)
    finally:
        os.close(root_fd)


def _walk(root_fd: int, stop_past: Usage | None, interrupted: Callable[[], bool]) -> Usage | None:
    top = os.fstat(root_fd)
    seen: set[tuple[int, int]] = set()
    total, entries = top.st_blocks * 512, 0
    # (parent, name, device, inode): a parent's path is one string its children share,
    # so that a million directories at the bottom of a deep path do not each hold a copy.
    pending: list[tuple[str, str, int, int]] = [("", ".", top.st_dev, top.st_ino)]
    while pending:
        parent, name, device, inode = pending.pop()
        relative = f"{parent}/{name}" if parent else name
        try:
            fd = root_fd if relative == "." else _open_below(root_fd, relative)
        except OSError as exc:
            if exc.errno in _GONE or exc.errno == errno.EXDEV:
                continue  # gone, or a symlink or mount put in its place
            if exc.errno == errno.ENAMETOOLONG:
                return Usage(total, entries, f"a path of more than {len(relative)} bytes")
            if exc.errno in _UNREADABLE:  # not root: the tenant's doing
                return Usage(total, entries, f"{relative!r} cannot be read ({exc.strerror})")
            raise
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (device, inode):
                continue  # not the directory its parent listed
            with os.scandir(fd) as listing:
                for entry in listing:
                    entries += 1
                    if entries % _LOOK_EVERY == 0:
                        if interrupted():
                            return None
                        if _past(total, entries, stop_past):
                            return Usage(total, entries)
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError as exc:
                        if exc.errno in _GONE:
                            continue
                        if exc.errno in _UNREADABLE:  # a directory it may read, not search
                            where = f"{relative}/{entry.name}"
                            return Usage(
                                total, entries, f"{where!r} cannot be read ({exc.strerror})"
                            )
                        raise
                    key = (info.st_dev, info.st_ino)
                    if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                        if key in seen:
                            continue
                        seen.add(key)
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        below = "" if relative == "." else relative
                        pending.append((below, entry.name, info.st_dev, info.st_ino))
        finally:
            if fd != root_fd:
                os.close(fd)
        if interrupted():
            return None
        if _past(total, entries, stop_past):
            break
    return Usage(total, entries)


def _past(total: int, entries: int, bound: Usage | None) -> bool:
    return bound is not None and (total > bound.bytes or entries > bound.entries)


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
                self.passed = f"its directory cannot be measured: {usage.unmeasurable}"
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
        failed = False
        while not self._done.wait(_POLL_S):
            if self.cancelled.is_set():
                self.stop.set()
                return
            if time.monotonic() < due:
                continue
            began = time.monotonic()
            try:
                self._check(lambda: self._done.is_set() or self.cancelled.is_set())
            except Exception:  # measured again at the end, which raises it; the cancel
                if not failed:  # is still passed on meanwhile
                    LOGGER.exception("the disk watch of %s cannot measure it", self.roots[0][0])
                failed = True
            if self.passed:
                return
            spent = time.monotonic() - began
            interval = min(MAX_INTERVAL_S, max(CHECK_INTERVAL_S, spent / WALKING_SHARE))
            due = time.monotonic() + interval

    def finish(self) -> str:
        """Ends the watch and measures once more: what the action passed, or ""."""
        self.close()
        if not self.passed:
            self._check()
        return self.passed
