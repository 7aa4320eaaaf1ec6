"""Removes a directory tree an action or worker left, read-only directories included.

``shutil.rmtree`` cannot remove the entries of a directory its owner made read-only
(Go's module cache is 0555) unless the process is root, which bypasses permissions: an
executor run without root left such trees behind for good. Here a directory whose
entries cannot be removed (or that cannot be opened) is given back its owner's rwx, and
the removal tried again.

The walk goes through file descriptors opened with ``O_NOFOLLOW``: a symlink is removed,
never followed, and nothing outside the tree is changed, even by a tenant's process
swapping a directory for a symlink while the executor (perhaps root) walks it."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

LOGGER = logging.getLogger(__name__)

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A handle on a directory that needs no permission on it (only to look it up): enough
#: to change its mode through /proc/self/fd, which names that very directory.
_HANDLE_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OWNER_RWX = stat.S_IRWXU


def remove_tree(path: Path) -> None:
    """Removes ``path`` (a directory tree, or a file) if it exists. What cannot be
    removed even so (another owner's files, an immutable one) is left, with a warning
    naming it: the callers clean up after work that is done, and must go on."""
    failures: list[str] = []
    try:
        parent = os.open(path.parent, _DIRECTORY_FLAGS)
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):
            failures.append(f"{path.parent}: {exc.strerror}")
    else:
        try:  # the parent is outside the tree: never made writable here
            _remove_entry(parent, path.name, path, failures, inside=False)
        finally:
            os.close(parent)
    if failures:
        LOGGER.warning(
            "could not remove all of %s (%d left: %s); remove it by hand, as its owner or root",
            path, len(failures), "; ".join(failures[:3]),
        )  # fmt: skip


def _remove_entry(
    directory: int, name: str, shown: Path, failures: list[str], inside: bool
) -> None:
    """Removes ``name`` from the open ``directory`` (a directory entry emptied first),
    adding to ``failures`` what could not be removed. ``inside``: ``directory`` is part
    of the tree, and may be made writable."""
    try:
        mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            below = _open_directory(directory, name, inside)
            try:
                _empty(below, shown, failures)
            finally:
                os.close(below)
            _with_access(directory, inside, lambda: os.rmdir(name, dir_fd=directory))
        else:
            _with_access(directory, inside, lambda: os.unlink(name, dir_fd=directory))
    except FileNotFoundError:
        pass  # gone meanwhile: what was asked
    except OSError as exc:
        failures.append(f"{shown}: {exc.strerror}")


def _empty(directory: int, shown: Path, failures: list[str]) -> None:
    with os.scandir(directory) as listing:
        names = [entry.name for entry in listing]
    for name in names:
        _remove_entry(directory, name, shown / name, failures, inside=True)


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
