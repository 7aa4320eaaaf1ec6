"""Reading an action's outputs never follows a symlink: not the output itself, not a
directory on its way, not an entry of an output directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker_runtime.executor.collect import OutputDirectory, OutputFile, UnsafeOutput, read_output


def test_files_and_trees_are_read(tmp_path: Path) -> None:
    (tmp_path / "out" / "d" / "e").mkdir(parents=True)
    (tmp_path / "out" / "f.txt").write_text("f")
    (tmp_path / "out" / "d" / "b.sh").write_text("b")
    (tmp_path / "out" / "d" / "b.sh").chmod(0o755)
    (tmp_path / "out" / "d" / "e" / "a.txt").write_text("a")
    assert read_output(str(tmp_path), "out/f.txt") == OutputFile(b"f", False)
    tree = read_output(str(tmp_path), "out/d")
    assert isinstance(tree, OutputDirectory)
    assert tree.files == {"b.sh": OutputFile(b"b", True)}
    assert tree.directories["e"].files == {"a.txt": OutputFile(b"a", False)}
    assert read_output(str(tmp_path), "out/missing") is None
    assert read_output(str(tmp_path), "nowhere/missing") is None


def test_a_fifo_output_is_not_read_and_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    assert read_output(str(tmp_path), "pipe") is None


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
        read_output(str(tmp_path / "action"), output)
