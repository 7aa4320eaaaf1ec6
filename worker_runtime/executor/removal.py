"""Removes a directory tree an action or worker left, read-only directories included.

``shutil.rmtree`` cannot remove the entries of a directory its owner made read-only
(Go's module cache is 0555) unless the process is root, which bypasses permissions: an
executor run without root left such trees behind for good. Here a directory whose
entries cannot be removed (or that cannot be opened) is given back its owner's rwx, and
the removal tried again.

The walk goes through file descriptors opened with ``O_NOFOLLOW``: a symlink is removed,
never followed, and nothing outside the tree is changed, even by a tenant's process
swapping a directory for a symlink while the executor (perhaps root) walks it. At most
``MAX_OPEN_DIRECTORIES`` of them are open at once: a directory deeper than that is moved
up to the tree's top and emptied from there, so that a tree of any depth is removed
without taking the descriptors the executor's other threads need."""

from __future__ import annotations

import itertools
import logging
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger(__name__)

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A handle on a directory that needs no permission on it (only to look it up): enough
#: to change its mode through /proc/self/fd, which names that very directory.
_HANDLE_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OWNER_RWX = stat.S_IRWXU
#: Directories of one tree open at once, at most (one per level of the walk).
MAX_OPEN_DIRECTORIES = 32
#: Directories moved up in one removal, at most: a process of the tenant's still running
#: (no sandbox, no control group) could make new ones below each as fast as they move.
MAX_HOISTS = 100_000


def remove_tree(path: Path) -> None:
    """Removes ``path`` (a directory tree, or a file) if it exists. What cannot be
    removed even so (another owner's files, an immutable one) is left, with a warning
    naming it: the callers
    clean up after work that is done, and must go on."""
    failures: list[str] = []
    try:
        parent = os.open(path.parent, _DIRECTORY_FLAGS)
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):
            failures.append(f"{path.parent}: {exc.strerror}")
    else:
        try:  # the parent is outside the tree: never made writable here
            _remove_walking(parent, path.name, path, failures)
        finally:
            os.close(parent)
    if failures:
        LOGGER.warning(
            "could not remove all of %s (%d left: %s); remove it by hand, as its owner or root",
            path, len(failures), "; ".join(failures[:3]),
        )  # fmt: skip


@dataclass
class _Emptying:
    """A directory of the tree open for emptying: what is left of its listing, and where
    it sits (its parent's descriptor and its name there) to be removed once empty."""

    fd: int
    names: list[str]
    parent: int
    name: str
    shown: Path
    #: Whether ``parent`` is part of the tree (and may be made writable).
    parent_inside: bool


def _remove_walking(top_parent: int, top_name: str, top: Path, failures: list[str]) -> None:
    """Removes ``top_name`` from ``top_parent`` depth first, with a stack of its own (a
    tree of any depth, no recursion), adding to ``failures`` what could not be removed."""
    stack: list[_Emptying] = []
    _take(top_parent, top_name, top, False, stack, failures)
    hoists = itertools.count(1)
    while stack:
        emptying = stack[-1]
        if emptying.names:
            name = emptying.names.pop()
            if len(stack) >= MAX_OPEN_DIRECTORIES:
                # Never a level deeper: moved up, or left (and said so).
                problem = _hoist(emptying, name, stack[0], hoists)
                if problem is not None:
                    failures.append(f"{emptying.shown / name}: {problem}")
                continue
            _take(emptying.fd, name, emptying.shown / name, True, stack, failures)
            continue
        stack.pop()
        os.close(emptying.fd)
        try:
            _with_access(emptying.parent, emptying.parent_inside, _rmdir_of(emptying))
        except FileNotFoundError:
            pass
        except OSError as exc:
            failures.append(f"{emptying.shown}: {exc.strerror}")


def _hoist(emptying: _Emptying, name: str, top: _Emptying, hoists: Iterator[int]) -> str | None:
    """Moves ``name`` from ``emptying`` to the tree's top directory under a new name, to
    be emptied from there, if it is a directory (anything else is removed where it is).
    None when done; else why not. (A move needs no descriptor on what moves, and the top
    is emptied last.) Refused for want of permission, the two directories and the one
    that moves (whose ``..`` changes) are given their owner's rwx and it is tried again.
    The new name is random: one a process of the tenant's made first would be replaced
    (an empty directory) or refuse the move."""
    try:
        try:
            mode = os.stat(name, dir_fd=emptying.fd, follow_symlinks=False).st_mode
        except PermissionError:  # looking ``name`` up needs search (x) on its directory
            _grant_owner_access(emptying.fd)
            mode = os.stat(name, dir_fd=emptying.fd, follow_symlinks=False).st_mode
        if not stat.S_ISDIR(mode):
            _with_access(emptying.fd, True, lambda: os.unlink(name, dir_fd=emptying.fd))
            return None
        if next(hoists) > MAX_HOISTS:  # directories only: files deep down are no reason
            return f"more than {MAX_HOISTS:,} directories moved up (still growing?)"
        new = f".removing-{uuid.uuid4().hex}"
        move = lambda: os.rename(name, new, src_dir_fd=emptying.fd, dst_dir_fd=top.fd)  # noqa: E731
        try:
            move()
        except PermissionError:
            _grant_owner_access(emptying.fd)
            _grant_owner_access(top.fd)
            handle = os.open(name, _HANDLE_FLAGS, dir_fd=emptying.fd)
            try:
                _grant_owner_access(handle)
            finally:
                os.close(handle)
            move()
    except FileNotFoundError:
        return None  # gone meanwhile: what was asked
    except OSError as exc:
        return f"could not be moved up to be removed ({exc.strerror})"
    top.names.append(new)
    return None


def _rmdir_of(emptying: _Emptying) -> Callable[[], None]:
    return lambda: os.rmdir(emptying.name, dir_fd=emptying.parent)


def _take(
    directory: int,
    name: str,
    shown: Path,
    inside: bool,
    stack: list[_Emptying],
    failures: list[str],
) -> None:
    """Removes ``name`` from the open ``directory`` if it is not a directory; a directory
    is opened and pushed on ``stack``, to be emptied and then removed. ``inside``:
    ``directory`` is part of the tree, and may be made writable."""
    try:
        try:
            mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
        except PermissionError:
            if not inside:
                raise
            _grant_owner_access(directory)  # looking ``name`` up needs search (x) on it
            mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
        if not stat.S_ISDIR(mode):
            _with_access(directory, inside, lambda: os.unlink(name, dir_fd=directory))
            return
        below = _open_directory(directory, name, inside)
        try:
            with os.scandir(below) as listing:
                names = [entry.name for entry in listing]
        except BaseException:
            os.close(below)
            raise
        stack.append(_Emptying(below, names, directory, name, shown, inside))
    except FileNotFoundError:
        pass  # gone meanwhile: what was asked
    except OSError as exc:
        failures.append(f"{shown}: {exc.strerror}")


def _open_directory(directory: int, name: str, inside: bool) -> int:
    """``name`` in ``directory`` opened for listing, never through a symlink. Refused for
    want of permission: ``directory`` (if inside the tree) is given its owner's rwx, then
    ``name`` itself (the tree's own root too), each followed by another try."""
    try:
        return os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
    except PermissionError:
        if inside:  # it may lack the search (x) permission that looking ``name`` up needs
            _grant_owner_access(directory)
    try:
        return os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
    except PermissionError:
        handle = os.open(name, _HANDLE_FLAGS, dir_fd=directory)
        try:
            _grant_owner_access(handle)
        finally:
            os.close(handle)
    return os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)


def _with_access(directory: int, inside: bool, remove: Callable[[], None]) -> None:
    """Calls ``remove`` (an unlink or rmdir in ``directory``); refused for want of
    permission in a directory of the tree, once more with the directory made writable."""
    try:
        remove()
    except PermissionError:
        if not inside:
            raise
        _grant_owner_access(directory)
        remove()


def _grant_owner_access(directory: int) -> None:
    """Adds u+rwx to the directory open as ``directory`` (a listing or an O_PATH fd),
    through /proc/self/fd, which reaches that directory itself, never a symlink."""
    mode = stat.S_IMODE(os.fstat(directory).st_mode)
    os.chmod(f"/proc/self/fd/{directory}", mode | _OWNER_RWX)
