"""Reading an action's outputs never follows a symlink: not the output itself, not a
directory on its way, not an entry of an output directory. And it stops at the action's
budget: a sparse file, a file still growing, a huge or deep tree ends as OutputTooLarge."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import threading
import tracemalloc
from pathlib import Path

import pytest

from worker_runtime.executor.collect import (
    ENTRY_OVERHEAD_BYTES,
    OutputBudget,
    OutputDirectory,
    OutputFile,
    OutputTooLarge,
    OutputUnreadable,
    UnsafeOutput,
    read_capped,
    read_output,
)
from worker_runtime.executor.removal import remove_tree

MB = 1 << 20


def budget() -> OutputBudget:
    return OutputBudget(MB)


def test_files_and_trees_are_read(tmp_path: Path) -> None:
    (tmp_path / "out" / "d" / "e").mkdir(parents=True)
    (tmp_path / "out" / "f.txt").write_text("f")
    (tmp_path / "out" / "d" / "b.sh").write_text("b")
    (tmp_path / "out" / "d" / "b.sh").chmod(0o755)
    (tmp_path / "out" / "d" / "e" / "a.txt").write_text("a")
    assert read_output(str(tmp_path), "out/f.txt", budget()) == OutputFile(b"f", False)
    tree = read_output(str(tmp_path), "out/d", budget())
    assert isinstance(tree, OutputDirectory)
    assert tree.files == {"b.sh": OutputFile(b"b", True)}
    assert tree.directories["e"].files == {"a.txt": OutputFile(b"a", False)}
    assert read_output(str(tmp_path), "out/missing", budget()) is None
    assert read_output(str(tmp_path), "nowhere/missing", budget()) is None


def test_a_fifo_output_is_not_read_and_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    assert read_output(str(tmp_path), "pipe", budget()) is None


def test_a_socket_output_is_neither_a_file_nor_a_directory(tmp_path: Path) -> None:
    """Opening a socket fails (ENXIO), which was taken for the executor's fault: INTERNAL,
    and the action retried, failing the same way each time."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "kept.txt").write_text("k")
    sockets = []
    for path in (tmp_path / "sock", tmp_path / "tree" / "sock"):
        made = socket.socket(socket.AF_UNIX)
        made.bind(str(path))
        sockets.append(made)
    try:
        assert read_output(str(tmp_path), "sock", budget()) is None
        tree = read_output(str(tmp_path), "tree", budget())
        assert isinstance(tree, OutputDirectory)
        assert list(tree.files) == ["kept.txt"] and not tree.directories
    finally:
        for made in sockets:
            made.close()


def test_an_entry_whose_name_is_not_utf8_is_the_actions_fault(tmp_path: Path) -> None:
    """It raised UnicodeEncodeError where the Tree was built: INTERNAL, retried."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / os.fsdecode(b"caf\xe9.txt")).write_text("x")
    with pytest.raises(OutputUnreadable, match="not UTF-8"):
        read_output(str(tmp_path), "tree", budget())


def test_an_output_path_of_a_thousand_parts_holds_one_directory_at_a_time(
    tmp_path: Path,
) -> None:
    """Each directory on the way was held open to the end: a client declaring a path of
    a thousand parts took the executor's descriptors (EMFILE: INTERNAL, retried)."""
    parts = ["d"] * 1000
    at = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            os.mkdir(part, dir_fd=at)
            below = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=at)
            os.close(at)
            at = below
        os.close(os.open("out", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=at))
    finally:
        os.close(at)
    relative = "/".join([*parts, "out"])
    pid = os.fork()
    if pid == 0:  # a low descriptor limit of its own
        code = 1
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            found = read_output(str(tmp_path), relative, budget())
            code = 0 if found == OutputFile(b"", False) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    remove_tree(tmp_path / "d")  # pytest's own clean-up recurses, and would fail on it
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize(
    ("link", "output"),
    [
        ("out.txt", "out.txt"),  # the output itself
        ("dir", "dir/secret"),  # a directory on its way
        ("tree/inner", "tree"),  # an entry of an output directory
    ],
)
def test_a_symlink_anywhere_is_refused(tmp_path: Path, link: str, output: str) -> None:
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "secret").write_text("root's")
    (tmp_path / "action" / "tree").mkdir(parents=True)
    (tmp_path / "action" / link).symlink_to(secret / "secret" if "." in link else secret)
    with pytest.raises(UnsafeOutput, match="symlink"):
        read_output(str(tmp_path / "action"), output, budget())


def test_a_sparse_file_past_the_budget_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with (tmp_path / "huge").open("wb") as handle:
        handle.truncate(1 << 40)  # a terabyte that takes no disk
    with pytest.raises(
        OutputTooLarge, match=r"huge is 1048576 MB, which would take the outputs past 1\.0 MB"
    ) as refused:
        read_output(str(tmp_path), "huge", budget())
    assert refused.value.by_bytes


def test_the_budget_is_shared_by_all_the_outputs_of_an_action(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"x" * (600 << 10))
    shared = budget()
    assert read_output(str(tmp_path), "a", shared) is not None
    with pytest.raises(OutputTooLarge, match=r"b is 0\.6 MB, which would take the outputs"):
        read_output(str(tmp_path), "b", shared)


def test_a_read_stops_at_the_budget_whatever_the_size_said(tmp_path: Path) -> None:
    """The size seen before the read is not trusted (a file can grow after it): the read
    itself stops at the budget. read_capped reads every output file, stdout and stderr;
    here from a pipe that a writer keeps filling, as a growing file would."""
    limited = budget()
    reader, writer = os.pipe()

    def fill() -> None:
        with contextlib.suppress(BrokenPipeError), os.fdopen(writer, "wb") as out:
            for _ in range(3 * 16):
                out.write(b"x" * (64 << 10))

    filler = threading.Thread(target=fill)
    filler.start()
    try:
        with pytest.raises(OutputTooLarge, match=r"growing takes the outputs past 1\.0 MB"):
            read_capped(reader, "growing", limited)
    finally:
        os.close(reader)
        filler.join(timeout=30)
    assert limited.used_bytes <= MB


def test_a_file_is_held_once_while_it_is_read(tmp_path: Path) -> None:
    """A file that does not change as it is read is read into the one buffer returned:
    its size is held once, not as chunks and then their join as well (the executor, root,
    reads up to --max-output-mb of outputs per action)."""
    size = 64 * MB
    (tmp_path / "big").write_bytes(os.urandom(1 << 16) * (size >> 16))
    tracemalloc.start()
    try:
        found = read_output(str(tmp_path), "big", OutputBudget(2 * size))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(found, OutputFile) and len(found.data) == size
    assert peak < 1.25 * size, f"{peak / MB:.0f} MB held to read a {size // MB} MB file"


def test_a_file_is_read_from_where_it_stands_to_the_end_it_has_by_then(tmp_path: Path) -> None:
    path = tmp_path / "growing"
    path.write_bytes(b"a" * (3 * MB))
    with path.open("rb") as handle, path.open("ab") as writer:
        first = os.read(handle.fileno(), MB)  # the read under way when the file grows
        writer.write(b"b" * MB)
        writer.flush()
        rest = read_capped(handle.fileno(), "growing", OutputBudget(8 * MB))
    assert first + rest == b"a" * (3 * MB) + b"b" * MB


@pytest.mark.parametrize("max_mb", [4, 1.5])
def test_what_a_file_grows_by_as_it_is_read_is_read_too_within_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_mb: float
) -> None:
    """A writer (a worker's stray child) adds to the file while it is read: what it added
    is read after, checked against the budget before it is read."""
    path = tmp_path / "growing"
    path.write_bytes(b"a" * MB)
    real_read = os.read
    grown: list[bool] = []

    def read_then_grow(fd: int, size: int) -> bytes:
        data = real_read(fd, size)
        if not grown:
            grown.append(True)
            with path.open("ab") as writer:
                writer.write(b"b" * MB)
        return data

    monkeypatch.setattr(os, "read", read_then_grow)
    limited = OutputBudget(int(max_mb * MB))
    with path.open("rb") as handle:
        if max_mb == 4:
            assert read_capped(handle.fileno(), "growing", limited) == b"a" * MB + b"b" * MB
            assert limited.used_bytes == 2 * MB
        else:
            with pytest.raises(
                OutputTooLarge,
                match=r"growing grew by 1\.0 MB as it was read, which would take the outputs "
                r"past 1\.5 MB",
            ):
                read_capped(handle.fileno(), "growing", limited)
            assert limited.used_bytes == MB


def test_each_entry_costs_the_budget_its_name_and_more(tmp_path: Path) -> None:
    """Empty files are not free: each costs ENTRY_OVERHEAD_BYTES and its name, so that a
    million of them cannot fill the executor's memory for nothing."""
    (tmp_path / "out").mkdir()
    for index in range(40):
        (tmp_path / "out" / f"{index:0>200}").write_text("")
    with pytest.raises(OutputTooLarge, match="takes the outputs past") as refused:
        read_output(str(tmp_path), "out", OutputBudget(40 * (ENTRY_OVERHEAD_BYTES + 200)))
    assert refused.value.by_bytes
    assert read_output(str(tmp_path), "out", OutputBudget(41 * (ENTRY_OVERHEAD_BYTES + 200)))


def test_a_directory_nested_too_deep_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / "out"
    for _ in range(10):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("x")
    with pytest.raises(OutputTooLarge, match="nested more than 5 directories deep") as deep_error:
        read_output(str(tmp_path), "out", OutputBudget(MB, max_depth=5))
    assert not deep_error.value.by_bytes  # a fixed limit: no flag to raise
    assert read_output(str(tmp_path), "out", OutputBudget(MB, max_depth=11)) is not None


def test_a_directory_with_too_many_entries_is_refused_while_it_is_listed(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    for index in range(20):
        (tmp_path / "out" / f"f{index}").write_text("")
    with pytest.raises(OutputTooLarge, match="more than 10 files and directories"):
        read_output(str(tmp_path), "out", OutputBudget(MB, max_entries=10))
