"""Reads an action's outputs out of its directory without following a symlink anywhere on
the way: every component is opened relative to the one before it with ``O_NOFOLLOW``.

The executor reads outputs as root while the tenant's processes (a persistent worker, a
child that left the action's process group) may still be changing the directory: a check
of the path followed by a read by path would let them swap in a symlink in between and
have root read any file for them. An fd-relative walk leaves no such window."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: opening a FIFO someone left as an output does not wait for a writer.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeOutput(Exception):
    """An output is, or passes through, a symlink."""


@dataclass
class OutputFile:
    data: bytes
    executable: bool


@dataclass
class OutputDirectory:
    files: dict[str, OutputFile] = field(default_factory=dict)
    directories: dict[str, OutputDirectory] = field(default_factory=dict)


@contextlib.contextmanager
def _opened(name: str, flags: int, dir_fd: int | None, shown: str) -> Iterator[int]:
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        # ELOOP: the last component is a symlink; ENOTDIR: one on the way is.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(name, dir_fd):
            raise UnsafeOutput(f"{shown} is a symlink") from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _is_symlink(name: str, dir_fd: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def read_output(root: str, relative: str) -> OutputFile | OutputDirectory | None:
    """The output at ``relative`` (a safe relative path) under ``root``: a file, a
    directory tree, or None if absent or neither (a FIFO, a socket). UnsafeOutput if it
    or a directory on its way is a symlink."""
    parts = relative.split("/")
    with contextlib.ExitStack() as stack:
        fd = stack.enter_context(_opened(root, _DIRECTORY_FLAGS, None, root))
        walked = []
        for part in parts[:-1]:
            walked.append(part)
            try:
                fd = stack.enter_context(_opened(part, _DIRECTORY_FLAGS, fd, "/".join(walked)))
            except FileNotFoundError:
                return None
        try:
            leaf = stack.enter_context(_opened(parts[-1], _FILE_FLAGS, fd, relative))
        except FileNotFoundError:
            return None
        return _read(leaf, relative)


def _read(fd: int, shown: str) -> OutputFile | OutputDirectory | None:
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        with os.fdopen(os.dup(fd), "rb") as handle:
            return OutputFile(handle.read(), bool(mode & 0o111))
    if not stat.S_ISDIR(mode):
        return None
    tree = OutputDirectory()
    for entry in sorted(os.scandir(fd), key=lambda e: e.name):
        name = f"{shown}/{entry.name}"
        if entry.is_symlink():
            raise UnsafeOutput(f"output directory entry {name} is a symlink")
        with _opened(entry.name, _FILE_FLAGS, fd, name) as child:
            found = _read(child, name)
        if isinstance(found, OutputFile):
            tree.files[entry.name] = found
        elif isinstance(found, OutputDirectory):
            tree.directories[entry.name] = found
    return tree
