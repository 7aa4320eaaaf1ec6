"""@argfile expansion as Bazel does it."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker_runtime.errors import RequestError
from worker_runtime.protocol.argfiles import expand_argfiles


def test_expands_recursively_and_passes_flagfiles_and_double_at(tmp_path: Path) -> None:
    (tmp_path / "inner").write_text("c\n--flagfile=x\n")
    (tmp_path / "outer").write_text("a\r\n@inner\nb\n")
    args = ["first", "@outer", "@@literal", "--flagfile=f", "-flagfile=g", "@"]
    assert expand_argfiles(args, str(tmp_path)) == [
        "first",
        "a",
        "c",
        "--flagfile=x",
        "b",
        "@@literal",
        "--flagfile=f",
        "-flagfile=g",
        "@",
    ]


def test_no_argfile_returns_same_list(tmp_path: Path) -> None:
    args = ["a", "b"]
    assert expand_argfiles(args, str(tmp_path)) is args


def test_missing_argfile_names_it(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match=r"argument file .nope\.args. does not exist"):
        expand_argfiles(["@nope.args"], str(tmp_path))


def test_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("@b\n")
    (tmp_path / "b").write_text("@a\n")
    with pytest.raises(RequestError, match="includes itself"):
        expand_argfiles(["@a"], str(tmp_path))


def test_non_utf8_argfile(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(RequestError, match="not valid UTF-8"):
        expand_argfiles(["@bad"], str(tmp_path))
