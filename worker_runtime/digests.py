"""The one cache of file content digests (request inputs, tool inputs, remote inputs),
keyed by what ``stat`` says of the file, so that a file that has not changed is never
read again, and a file that may still change without ``stat`` showing it is never kept."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
import threading
import time
from collections import OrderedDict

#: ``CLOCK_REALTIME_COARSE`` (<linux/time.h>; Python names no constant for it): the clock
#: Linux stamps a file's times with, which moves once a tick (a few ms). Other systems
#: give the number 5 to other clocks.
_CLOCK_REALTIME_COARSE = 5 if sys.platform == "linux" else None
#: Elsewhere the stamps' clock is not known: the real-time clock, a second back.
_UNKNOWN_FILE_CLOCK_MARGIN_NS = 1_000_000_000


class DigestCache:
    """SHA-256 digests (lowercase hex, the form Bazel sends in ``WorkRequest.inputs``).

    A file is re-hashed only when its device, inode, size, mtime or ctime changed since it
    was last hashed (ctime catches a rewrite that kept the mtime). A digest is kept only
    if the file's ctime was already in the past, on the kernel's clock, before the file
    was looked at and read: a write in the same tick as the last one can leave every
    field ``stat`` shows as it was (git calls such a file racily clean), and the next
    look would take the old digest for the new content. Thread-safe; holds at most
    ``max_entries`` entries (least recently used go).

    What the rule cannot see, as git cannot: a write already under way when the file is
    looked at (a write is stamped as it starts), stores through a writable mapping to a
    page already dirty, a file system that stamps with another machine's clock running
    behind this one's (a network file system's server), and this clock stepped back
    over a kept digest's stamp.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[str, tuple[tuple[int, ...], str]] = OrderedDict()
        self._lock = threading.Lock()
        self._max_entries = max_entries
        #: How many files were read and hashed (tests and benchmarks observe the cache).
        self.files_hashed = 0

    def digest(self, path: str) -> str | None:
        """The hex digest of the regular file at ``path``, or None if it is not one or
        cannot be read."""
        try:
            return self.read(path)
        except (OSError, UnicodeError):  # UnicodeError: a name no file system name encodes
            return None

    def known(self, path: str, info: os.stat_result) -> str | None:
        """The digest of ``path`` if it was hashed as ``info`` (its ``stat`` now) says it
        is; None if it must be read. Never reads the file."""
        signature = _signature(info)
        with self._lock:
            cached = self._entries.get(path)
            if cached is not None and cached[0] == signature:
                self._entries.move_to_end(path)
                return cached[1]
        return None

    def read(self, path: str) -> str:
        """The hex digest of the file at ``path``; OSError (with its strerror) if it
        cannot be read or is not a regular file."""
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        known = self.known(path, info)
        if known is not None:
            return known
        looked_at_ns = file_clock_ns()  # before the fstat kept with the digest, as store asks
        # Not blocking: a FIFO put at the path since the stat opens without a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)  # of what is read: the path may name another file by now
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            hasher = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                hasher.update(chunk)
        finally:
            os.close(fd)
        value = hasher.hexdigest()
        self.store(path, info, value, looked_at_ns)
        return value

    def store(self, path: str, info: os.stat_result, value: str, looked_at_ns: int) -> None:
        """Keeps ``value``, the digest of ``path`` hashed as ``info`` said it was, if
        ``stat`` will show any later change: ``looked_at_ns`` is ``file_clock_ns()`` taken
        before ``info`` was."""
        with self._lock:
            self.files_hashed += 1
            if not settled(info, looked_at_ns):
                return
            self._entries[path] = (_signature(info), value)
            self._entries.move_to_end(path)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)


def file_clock_ns() -> int:
    """Now, on the clock the kernel stamps file times with (or, where that clock is not
    known, a time no later than it)."""
    if _CLOCK_REALTIME_COARSE is None:
        return time.time_ns() - _UNKNOWN_FILE_CLOCK_MARGIN_NS
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


def settled(info: os.stat_result, looked_at_ns: int) -> bool:
    """Whether any write that starts after ``looked_at_ns`` (``file_clock_ns()`` then)
    must change the ctime ``info`` shows. It does when that ctime is earlier by at least
    the file system's step: a write is stamped with the clock then, or later
    (fine-grained stamps, Linux 6.13+), cut down to the file system's step. The step is
    not known; a stamp cut to one is a multiple of it, so the largest power of ten up to
    a second dividing the ctime bounds it (two seconds for an even second: FAT's step).
    A step that is not a power of ten (Linux allows any divisor of a second; the file
    systems it builds in use powers of ten, and FAT two seconds) can be guessed too
    small."""
    ctime = info.st_ctime_ns
    step = 1
    while step < 1_000_000_000 and ctime % (step * 10) == 0:
        step *= 10
    if step == 1_000_000_000 and ctime % 2_000_000_000 == 0:
        step = 2_000_000_000
    return ctime + step <= looked_at_ns


def _signature(info: os.stat_result) -> tuple[int, ...]:
    """What says a file is unchanged since it was hashed."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
