"""The executor removes the trees that actions and workers leave even when they made
directories read-only (Go's module cache is 0555) and the executor is not root: where
``shutil.rmtree(..., ignore_errors=True)`` left such trees behind. It never follows a
symlink out of the tree, nor changes anything outside it.

Root bypasses the permission checks that matter here, so when the tests run as root the
removal runs in a forked child that has become ``nobody``, on a tree that is its own."""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from worker_runtime.executor import removal
from worker_runtime.executor.removal import MAX_OPEN_DIRECTORIES, remove_tree


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory the unprivileged user owns, in /tmp (pytest's own is root's, 0700)."""
    made = Path(tempfile.mkdtemp(prefix="removal-"))
    made.chmod(0o755)
    ids = unprivileged_ids()
    if ids is not None:
        os.chown(made, *ids)
    yield made
    shutil.rmtree(made, ignore_errors=True)  # as root here: permissions do not stop it


def unprivileged_ids() -> tuple[int, int] | None:
    """``nobody``'s uid and gid when the tests run as root; None when they do not."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def make_tree(base: Path) -> tuple[Path, Path]:
    """A tree as an action leaves it (a Go module cache: 0555 directories of 0444 files,
    one directory 0000), with a symlink to a read-only directory outside it; (tree, that
    outside directory). All the unprivileged user's."""
    tree = base / "tree"
    module = tree / "go" / "pkg" / "mod" / "example.com" / "m@v1.0.0"
    module.mkdir(parents=True)
    for name in ("go.mod", "m.go"):
        (module / name).write_text("module example.com/m\n")
        (module / name).chmod(0o444)
    sealed = tree / "sealed"
    (sealed / "inner").mkdir(parents=True)
    (sealed / "inner" / "file").write_text("x")
    outside = base / "outside"
    outside.mkdir()
    (outside / "kept").write_text("not the tree's")
    (tree / "link-out").symlink_to(outside)
    ids = unprivileged_ids()
    for at, directories, files in os.walk(base):
        for name in [*directories, *files]:
            if ids is not None:
                os.chown(Path(at) / name, *ids, follow_symlinks=False)
    outside.chmod(0o555)
    for at, _directories, _files in os.walk(tree / "go", topdown=False):
        Path(at).chmod(0o555)
    (sealed / "inner").chmod(0)
    sealed.chmod(0o555)
    return tree, outside


def removed_unprivileged(remove: Callable[[Path], object], tree: Path) -> None:
    """Runs ``remove(tree)`` as the unprivileged user (in a forked child, as root)."""
    ids = unprivileged_ids()
    if ids is None:
        remove(tree)
        return
    pid = os.fork()
    if pid == 0:  # the child: only file operations, then out without pytest's teardown
        code = 1
        try:
            os.setgroups([])
            os.setgid(ids[1])
            os.setuid(ids[0])
            remove(tree)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the removal failed in the child"


def test_rmtree_ignoring_errors_leaves_read_only_directories_behind(base: Path) -> None:
    tree, _ = make_tree(base)
    removed_unprivileged(lambda path: shutil.rmtree(path, ignore_errors=True), tree)
    assert (tree / "go" / "pkg" / "mod" / "example.com" / "m@v1.0.0" / "go.mod").exists()


def test_remove_tree_removes_read_only_directories_and_nothing_outside(base: Path) -> None:
    tree, outside = make_tree(base)
    removed_unprivileged(remove_tree, tree)
    assert not tree.exists() and not tree.is_symlink()
    # The symlink was removed, not followed: the directory it led to is as it was.
    assert (outside / "kept").read_text() == "not the tree's"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o555
    assert stat.S_IMODE(base.stat().st_mode) == 0o755  # the tree's parent: untouched


def test_remove_tree_of_what_is_not_there_does_nothing(base: Path) -> None:
    remove_tree(base / "absent")
    remove_tree(base / "no" / "such" / "parent")
    assert base.exists()


def test_remove_tree_removes_a_file_and_a_symlink_without_following_it(base: Path) -> None:
    (base / "file").write_text("x")
    (base / "target").mkdir()
    (base / "link").symlink_to(base / "target")
    remove_tree(base / "file")
    remove_tree(base / "link")
    assert not (base / "file").exists() and not (base / "link").is_symlink()
    assert (base / "target").is_dir()


def test_a_tree_deeper_than_the_interpreter_recursion_limit_is_removed(base: Path) -> None:
    """A tenant can make a tree of any depth: its removal must neither raise (the callers
    go on after it) nor leave it."""
    tree = base / "deep"
    at = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.mkdir("deep", dir_fd=at)
        for _ in range(1500):  # past Python's default recursion limit of 1000
            below = os.open("deep", os.O_RDONLY | os.O_DIRECTORY, dir_fd=at)
            os.close(at)
            at = below
            os.mkdir("deep", dir_fd=at)
        os.close(os.open("file", os.O_CREAT | os.O_WRONLY, 0o444, dir_fd=at))
    finally:
        os.close(at)
    remove_tree(tree)  # its depth is the point here, not permissions
    assert not tree.exists()


def test_a_tree_deeper_than_the_descriptors_the_executor_may_hold_is_removed(
    base: Path,
) -> None:
    """Each level of the walk held a descriptor open: a tenant's tree 300 deep, under a
    limit of 64 descriptors, was left behind, having taken every descriptor the other
    threads needed meanwhile. Levels past MAX_OPEN_DIRECTORIES are moved up to the top
    and emptied from there, read-only and unsearchable ones too."""
    tree = base / "deep"
    tree.mkdir()
    at = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(300):
            os.mkdir("d", dir_fd=at)
            os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o444, dir_fd=at))
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=at)
            if level < 150 and level % 50 == 49:
                os.chmod(f"/proc/self/fd/{at}", 0o555)  # read-only on the way
            elif level >= 150:
                os.chmod(f"/proc/self/fd/{at}", 0o600)  # not even searchable, all of them
            os.close(at)
            at = below
    finally:
        os.close(at)
    ids = unprivileged_ids()
    if ids is not None:
        for path, directories, files in os.walk(tree):
            for name in [*directories, *files, "."]:
                os.chown(Path(path) / name, *ids, follow_symlinks=False)
    pid = os.fork()
    if pid == 0:  # the child: a low descriptor limit of its own, then out
        code = 1
        try:
            if ids is not None:
                os.setgroups([])
                os.setgid(ids[1])
                os.setuid(ids[0])
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            remove_tree(tree)
            code = 0 if not os.path.lexists(tree) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the tree was left (2) or the child failed"
    assert MAX_OPEN_DIRECTORIES < 64


def test_the_bound_on_moves_counts_directories_not_files(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files below the open-directory bound are removed where they are: they counted
    against the moves' bound, and a deep tree of many files was left half removed."""
    monkeypatch.setattr(removal, "MAX_HOISTS", 5)
    # The directory whose entries are past the bound: the tree's top is the first open.
    deep = base / "deep" / Path(*["d"] * (removal.MAX_OPEN_DIRECTORIES - 1))
    (deep / "below").mkdir(parents=True)
    for index in range(50):
        (deep / f"f{index}").write_text("x")
    ids = unprivileged_ids()
    if ids is not None:
        for path, directories, files in os.walk(base / "deep"):
            for name in [*directories, *files, "."]:
                os.chown(Path(path) / name, *ids, follow_symlinks=False)
    removed_unprivileged(remove_tree, base / "deep")
    assert not (base / "deep").exists()


def test_directories_readable_but_not_searchable_are_removed(base: Path) -> None:
    """A 0600 or 0444 directory lets its entries be listed but not looked at: the look
    needs search (x), which is given back as rwx is."""
    tree = base / "tree"
    for mode in (0o600, 0o444):
        (tree / f"m{mode:o}" / "sub").mkdir(parents=True)
        (tree / f"m{mode:o}" / "file").write_text("x")
    ids = unprivileged_ids()
    if ids is not None:
        for at, directories, files in os.walk(base):
            for name in [*directories, *files]:
                os.chown(Path(at) / name, *ids, follow_symlinks=False)
    for mode in (0o600, 0o444):
        (tree / f"m{mode:o}").chmod(mode)
    removed_unprivileged(remove_tree, tree)
    assert not tree.exists()
