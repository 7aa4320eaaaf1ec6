"""Reads an action's outputs out of its directory without following a symlink anywhere on
the way: every component is opened relative to the one before it with ``O_NOFOLLOW``.

The executor reads outputs as root while the tenant's processes (a persistent worker, a
child that left the action's process group) may still be changing the directory: a check
of the path followed by a read by path would let them swap in a symlink in between and
have root read any file for them. An fd-relative walk leaves no such window.

The outputs are read whole into the executor's memory, so they are capped
(:class:`OutputBudget`): a tenant's sparse file of a terabyte, a file that grows while it
is read, or a directory nested thousands deep ends as :class:`OutputTooLarge`, never as
the executor out of memory or file descriptors."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: opening a FIFO someone left as an output does not wait for a writer.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


#: Read from a pipe at a time (a file's size is read in one call, once checked against
#: the budget).
_CHUNK_BYTES = 1 << 20
#: The most one read(2) returns on Linux.
_MAX_READ_BYTES = 0x7FFFF000
#: Levels of directories an output directory may have (each one open while it is read).
MAX_OUTPUT_DEPTH = 128
#: Files and directories all the outputs of one action may have together.
MAX_OUTPUT_ENTRIES = 1 << 20
#: What each file and directory of the outputs costs the budget besides its name and
#: contents: about what it takes in the executor's memory and in its Tree.
ENTRY_OVERHEAD_BYTES = 128


class UnsafeOutput(Exception):
    """An output is, or passes through, a symlink."""


class OutputUnreadable(Exception):
    """An output cannot be read for what the action made of its path (a directory on its
    way is a file, a name too long, a directory it left unreadable): the action's own
    fault, the same on every attempt."""


#: The errors of opening an output that the action's own directory causes, and what
#: each means there. Any other (EIO, ENOMEM, EMFILE...) is the executor's: not converted.
_ACTION_FAULTS = {
    errno.ENOTDIR: "is a file, not a directory, so nothing can be under it",
    errno.ENAMETOOLONG: "has a name longer than the file system allows (255 bytes)",
    errno.ELOOP: "passes through too many levels of symlinks",
    errno.EACCES: "was left unreadable by the action (its permissions deny the executor)",
    errno.EPERM: "was left unreadable by the action (its permissions deny the executor)",
}


class OutputTooLarge(Exception):
    """The outputs pass what an action may leave: bytes (``by_bytes``, the operator's
    --max-output-mb), or entries or depth (fixed)."""

    def __init__(self, message: str, by_bytes: bool) -> None:
        super().__init__(message)
        self.by_bytes = by_bytes


@dataclass
class OutputBudget:
    """What the outputs of one action may take together, checked as they are read: the
    bytes of their contents, stdout and stderr, and of each entry besides
    (ENTRY_OVERHEAD_BYTES and its name: what it costs in memory and in its Tree)."""

    max_bytes: int
    max_entries: int = MAX_OUTPUT_ENTRIES
    max_depth: int = MAX_OUTPUT_DEPTH
    used_bytes: int = 0
    used_entries: int = 0

    def snapshot(self) -> tuple[int, int]:
        """What is used so far, for ``restore`` to go back to (an output left out)."""
        return self.used_bytes, self.used_entries

    def restore(self, used: tuple[int, int]) -> None:
        self.used_bytes, self.used_entries = used

    def take_entry(self, shown: str, name: str, depth: int) -> None:
        self.used_entries += 1
        if self.used_entries > self.max_entries:
            raise OutputTooLarge(
                f"the outputs have more than {self.max_entries} files and directories (at {shown})",
                by_bytes=False,
            )
        if depth > self.max_depth:
            raise OutputTooLarge(
                f"{shown} is nested more than {self.max_depth} directories deep in its output",
                by_bytes=False,
            )
        self.take_bytes(shown, ENTRY_OVERHEAD_BYTES + len(os.fsencode(name)))

    def check_size(self, shown: str, size: int, grown: bool = False) -> None:
        """Refuses, before it is read, a file whose size alone (or, ``grown``, what it
        grew by as it was read) would pass the budget."""
        if self.used_bytes + size > self.max_bytes:
            what = (
                f"grew by {_megabytes(size)} as it was read" if grown else f"is {_megabytes(size)}"
            )
            raise OutputTooLarge(
                f"{shown} {what}, which would take the outputs past {_megabytes(self.max_bytes)}",
                by_bytes=True,
            )

    def take_bytes(self, shown: str, size: int) -> None:
        if self.used_bytes + size > self.max_bytes:
            raise OutputTooLarge(
                f"{shown} takes the outputs past {_megabytes(self.max_bytes)}", by_bytes=True
            )
        self.used_bytes += size


def _megabytes(count: int) -> str:
    value = count / (1 << 20)
    if value < 0.1:
        return f"{count} bytes"
    return f"{value:.0f} MB" if value >= 10 else f"{value:.1f} MB"


@dataclass
class OutputFile:
    data: bytes
    executable: bool


@dataclass
class OutputDirectory:
    files: dict[str, OutputFile] = field(default_factory=dict)
    directories: dict[str, OutputDirectory] = field(default_factory=dict)


class _NotFileOrDirectory(Exception):
    """What is there can be opened as neither (a socket: ENXIO)."""


def _open(name: str, flags: int, dir_fd: int | None, shown: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        # ELOOP: the last component is a symlink; ENOTDIR: one on the way is.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(name, dir_fd):
            raise UnsafeOutput(f"{shown} is a symlink") from None
        if exc.errno == errno.ENXIO:
            raise _NotFileOrDirectory(shown) from None
        if dir_fd is not None and exc.errno in _ACTION_FAULTS:  # inside the action's directory
            raise OutputUnreadable(f"{shown} {_ACTION_FAULTS[exc.errno]}") from None
        raise


def _is_symlink(name: str, dir_fd: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def read_output(
    root: str, relative: str, budget: OutputBudget
) -> OutputFile | OutputDirectory | None:
    """The output at ``relative`` (a safe relative path) under ``root``: a file, a
    directory tree, or None if absent or neither (a FIFO, a socket). UnsafeOutput if it
    or a directory on its way is a symlink; OutputUnreadable if the action made its path
    one that cannot be read (a file on its way); OutputTooLarge once it passes ``budget``
    (shared by the outputs of one action)."""
    parts = relative.split("/")
    # One directory open at a time on the way (a path of a thousand parts held a
    # thousand descriptors, which the executor's other threads needed).
    fd = _open(root, _DIRECTORY_FLAGS, None, root)
    try:
        for index, part in enumerate(parts[:-1]):
            try:
                below = _open(part, _DIRECTORY_FLAGS, fd, "/".join(parts[: index + 1]))
            except (FileNotFoundError, _NotFileOrDirectory):
                return None
            os.close(fd)
            fd = below
        try:
            leaf = _open(parts[-1], _FILE_FLAGS, fd, relative)
        except (FileNotFoundError, _NotFileOrDirectory):
            return None  # absent, or a socket: neither a file nor a directory
        try:
            budget.take_entry(relative, parts[-1], 0)
            return _read(leaf, relative, budget, 0)
        finally:
            os.close(leaf)
    finally:
        os.close(fd)


def _read(
    fd: int, shown: str, budget: OutputBudget, depth: int
) -> OutputFile | OutputDirectory | None:
    status = os.fstat(fd)
    if stat.S_ISREG(status.st_mode):
        budget.check_size(shown, status.st_size)  # a sparse file: refused before any read
        return OutputFile(read_capped(fd, shown, budget), bool(status.st_mode & 0o111))
    if not stat.S_ISDIR(status.st_mode):
        return None
    listed = []
    with os.scandir(fd) as listing:  # counted as listed: a huge directory stops early
        for entry in listing:
            budget.take_entry(f"{shown}/{entry.name}", entry.name, depth + 1)
            listed.append(entry)
    tree = OutputDirectory()
    for entry in sorted(listed, key=lambda e: e.name):
        name = f"{shown}/{entry.name}"
        if entry.is_symlink():
            raise UnsafeOutput(f"output directory entry {name} is a symlink")
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes, kept as surrogates
            raise OutputUnreadable(
                f"{shown} holds an entry whose name is not UTF-8 ({os.fsencode(entry.name)!r}):"
                " the Remote Execution API names files by strings"
            ) from None
        try:
            child = _open(entry.name, _FILE_FLAGS, fd, name)
        except _NotFileOrDirectory:
            continue  # a socket: neither, left out as a FIFO is
        try:
            found = _read(child, name, budget, depth + 1)
        finally:
            os.close(child)
        if isinstance(found, OutputFile):
            tree.files[entry.name] = found
        elif isinstance(found, OutputDirectory):
            tree.directories[entry.name] = found
    return tree


def read_capped(fd: int, shown: str, budget: OutputBudget) -> bytes:
    """The bytes of ``fd`` from where it stands to its end, refused once they would pass
    the budget. What a file holds is checked against the budget, then read in one call
    into the buffer returned (held once: not as chunks, then their join as well); what it
    grew by meanwhile (a worker's process can outlive the action) is checked and read
    after, and joined to it. A pipe is read in chunks, each counted as it comes."""
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        return _read_chunks(fd, shown, budget)
    position = os.lseek(fd, 0, os.SEEK_CUR)
    size = status.st_size
    parts: list[bytes] = []
    while size > position:
        left = size - position
        budget.check_size(shown, left, grown=bool(parts))  # refused unread
        part = os.read(fd, min(left, _MAX_READ_BYTES))
        if not part:  # it shrank
            break
        budget.take_bytes(shown, len(part))
        parts.append(part)
        position += len(part)
        size = os.fstat(fd).st_size
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_chunks(fd: int, shown: str, budget: OutputBudget) -> bytes:
    """A pipe's bytes to its end, each chunk counted as it comes."""
    chunks = []
    while chunk := os.read(fd, _CHUNK_BYTES):
        budget.take_bytes(shown, len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)
