"""A request's file reads done on the event loop when they cannot stall it: its
@argfiles, its envelope, and the digests of its inputs and tool inputs (from the digest
cache, or hashed here if the file is small). That is the usual case, and it saves the
hop to the file thread pool (execution/files.py) and back, which costs more than the
rest of a request's way through the runtime.

A read is quick only when nothing in it can wait: the file is named by a relative path
opened beneath the project root without leaving the root's file system (``openat2`` with
``RESOLVE_NO_XDEV``) and with every step of the path already in the kernel's lookup
cache (``RESOLVE_CACHED``), that file system is a local one, and a file whose bytes are
read is a regular file of at most ``MAX_QUICK_BYTES`` (opened non-blocking, so a FIFO is
seen and not waited for) whose bytes are already in the page cache (``RWF_NOWAIT``). A
digest is quick if the cache holds it for the file as ``fstat`` finds it now, or if
the file is read and hashed under the same rules as an argument file, within a
request's budget of ``MAX_QUICK_HASH_BYTES``. Anything else (an absolute path, a network
mount, a FIFO, a large or uncached file, a nested @argfile, a file that is missing or
not UTF-8, more to hash than the budget) answers None, and the request does its reads
off the loop as before, with the same errors.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import stat
import sys

from worker_runtime.digests import DigestCache, file_clock_ns
from worker_runtime.envelope import Envelope, parse_envelope
from worker_runtime.errors import RequestError
from worker_runtime.protocol.argfiles import (
    MAX_ARGFILE_READS,
    MAX_EXPANSION_BYTES,
    argfile_text,
    expansion_cost,
    is_argfile,
    split_lines,
)

#: File systems whose reads do not wait on a network. Others (nfs, cifs, fuse, 9p,
#: virtiofs, ceph...) may hang, and their argument files are read off the loop.
LOCAL_FILE_SYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs", "ramfs", "overlay", "zfs"}
)
#: Argument files larger than this are read off the loop.
MAX_QUICK_BYTES = 64 * 1024
#: A request with more input and tool files than this has their digests found off the
#: loop: each takes a few microseconds of the loop's time.
MAX_QUICK_DIGESTS = 64
#: How many bytes of a request's inputs and tool inputs may be hashed on the loop (the
#: files not hashed yet or changed since: in a build, usually one small source); SHA-256
#: of 64 KiB takes about 0.1 ms here, what the hop to the file pool costs.
MAX_QUICK_HASH_BYTES = 64 * 1024

_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
#: Linux 5.12 and later; where it is unknown (EINVAL), reads go without it.
_RESOLVE_CACHED = 0x20
#: openat2's system call number (the same on both architectures this runs on).
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine())
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_STAT_FLAGS = os.O_PATH | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
#: syscall(2) as openat2 is called through it; its arguments are longs (a C int is not).
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_long)
_HOW_SIZE = ctypes.sizeof(_OpenHow)
#: How os.fsencode encodes a name.
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def file_system_type(fd: int, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system ``fd`` is on, from the mount table (None if not found)."""
    device = os.fstat(fd).st_dev
    wanted = f"{os.major(device)}:{os.minor(device)}"
    with open(mountinfo, encoding="utf-8", errors="replace") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 2 and fields[2] == wanted and " - " in line:
                return line.split(" - ", 1)[1].split()[0]
    return None


class QuickRoot:
    """Quick reads of files beneath one project root (its directory kept open)."""

    def __init__(self, fd: int, root: str) -> None:
        self._fd = fd
        #: The root's path, as the digest cache's keys start.
        self.root = root
        info = os.fstat(fd)
        self._identity = (info.st_dev, info.st_ino)
        #: What the digest cache's key for a file beneath the root starts with: ``root +
        #: name`` is ``os.path.join(root, name)`` for the relative names taken here.
        self._prefix = os.path.join(root, "")
        self._resolve = _RESOLVE_NO_XDEV | _RESOLVE_NO_MAGICLINKS | _RESOLVE_CACHED
        #: openat2's argument for each set of open flags, made once, with its address
        #: (valid while the argument is kept here).
        self._hows: dict[int, tuple[_OpenHow, int]] = {}

    def still_at(self, root: str) -> bool:
        """Whether ``root`` still names the directory held open (not moved away, or
        removed and made again): else the reads would look in the old one."""
        try:
            info = os.stat(root)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self._identity

    @classmethod
    def open(cls, root: str, mountinfo: str = "/proc/self/mountinfo") -> QuickRoot | None:
        """A QuickRoot for ``root``, or None where no read beneath it can be quick (no
        openat2, a root on a network file system, a root that cannot be opened)."""
        if _SYS_OPENAT2 is None or not hasattr(os, "RWF_NOWAIT"):
            return None
        try:
            fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            local = file_system_type(fd, mountinfo) in LOCAL_FILE_SYSTEMS
        except OSError:
            local = False
        quick = cls(fd, root)
        probe = quick._open(".")  # ENOSYS without openat2; EPERM where seccomp refuses it
        if probe == -errno.EINVAL:  # a kernel before RESOLVE_CACHED
            quick._resolve &= ~_RESOLVE_CACHED
            quick._hows.clear()
            probe = quick._open(".")
        if probe >= 0:
            os.close(probe)
        if not local or probe < 0:
            quick.close()
            return None
        return quick

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _open(self, name: str, flags: int = _OPEN_FLAGS) -> int:
        """openat2 beneath the root, never crossing a mount nor waiting on a lookup:
        the fd, or -errno."""
        # Every request looks at each of its inputs through here: kept to few Python steps.
        if _SYS_OPENAT2 is None:
            return -errno.ENOSYS
        found = self._hows.get(flags)
        if found is None:
            how = _OpenHow(flags, 0, self._resolve)
            found = self._hows[flags] = (how, ctypes.addressof(how))
        address = found[1]
        try:
            path = name.encode(_FS_ENCODING, _FS_ERRORS)  # os.fsencode, without its checks
        except UnicodeError:
            return -errno.EINVAL
        if b"\0" in path:
            return -errno.EINVAL
        fd: int = _syscall(_SYS_OPENAT2, self._fd, path, address, _HOW_SIZE)
        return fd if fd >= 0 else -ctypes.get_errno()

    def read(self, name: str) -> str | None:
        """The text of file ``name`` (an argument file or an envelope) if it can be read
        at once and passes the argument file rule's text checks, else None."""
        if name.startswith("/") or self._fd < 0:  # os.path.isabs
            return None
        found = self._contents(name, MAX_QUICK_BYTES)
        if found is None:
            return None
        try:
            return argfile_text(name, found[0])
        except RequestError:  # the slow path says what is wrong with it
            return None

    def _contents(self, name: str, max_bytes: int) -> tuple[bytearray, os.stat_result] | None:
        """The bytes of regular file ``name`` (at most ``max_bytes``, all in the page
        cache) and its ``fstat`` as they were read; None if reading could wait."""
        fd = self._open(name)
        if fd < 0:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
                return None
            buffer = bytearray(info.st_size + 1)  # one more: a file that grew is seen
            try:
                got = os.preadv(fd, [buffer], 0, os.RWF_NOWAIT)
            except OSError:  # EAGAIN: not in the page cache; or no RWF_NOWAIT here
                return None
            if got != info.st_size:
                return None  # it changed meanwhile: the slow path reads it
            del buffer[got:]
            return buffer, info
        finally:
            os.close(fd)

    def envelope(self, name: str) -> Envelope | None:
        """The envelope (envelope.py) at ``name`` if it can be read at once and is valid,
        else None (the slow path says what is wrong with it)."""
        text = self.read(name)
        if text is None:
            return None
        try:
            return parse_envelope(text, name)
        except RequestError:
            return None

    def digest(self, name: str, digests: DigestCache, max_bytes: int = 0) -> tuple[str, int] | None:
        """The digest of file ``name`` and how many bytes were hashed to find it, if that
        cannot wait: from ``digests`` if it holds the digest for the file as it is now,
        else hashed here if the file is at most ``max_bytes`` and all in the page cache
        (and then kept in ``digests``). Else None."""
        if name.startswith("/") or self._fd < 0:  # os.path.isabs
            return None
        fd = self._open(name, _STAT_FLAGS)  # a look only: nothing is opened for reading
        if fd < 0:
            return None
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        path = self._prefix + name
        known = digests.known(path, info)
        if known is not None:
            return known, 0
        if info.st_size > max_bytes:
            return None
        looked_at_ns = file_clock_ns()
        found = self._contents(name, max_bytes)
        if found is None:
            return None
        data, info = found  # as read: the file may have changed since the look
        value = hashlib.sha256(data).hexdigest()
        digests.store(path, info, value, looked_at_ns)
        return value, len(data)

    def expand(self, args: tuple[str, ...]) -> list[str] | None:
        """``args`` with their @argfiles expanded, if every one can be read at once and
        none holds another; else None."""
        out: list[str] = []
        # The slow path's bounds, counted alike: past either, it is the one to refuse.
        reads, cost = 0, 0
        for arg in args:
            if not is_argfile(arg):
                out.append(arg)
                continue
            text = self.read(arg[1:])
            if text is None:
                return None
            reads += 1
            cost += expansion_cost(text if text.isascii() else text.encode())  # as bytes
            if reads > MAX_ARGFILE_READS or cost > MAX_EXPANSION_BYTES:
                return None
            lines = split_lines(text)
            if any(is_argfile(line) for line in lines):
                return None
            out.extend(lines)
        return out


_roots: dict[str, QuickRoot | None] = {}


def quick_root(root: str) -> QuickRoot | None:
    """The daemon's one QuickRoot for project root ``root``, opened again if the path
    now names another directory."""
    found = _roots.get(root)
    if found is not None and found.still_at(root):
        return found
    if found is not None:
        found.close()
    elif root in _roots:
        return None  # no quick reads beneath it
    found = _roots[root] = QuickRoot.open(root)
    return found
