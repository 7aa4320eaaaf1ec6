"""The remote persistent worker convention: argument split, worker key, safe paths."""

from __future__ import annotations

import pytest

from worker_runtime.remote.convention import (
    UnsafePathError,
    flagfile_path,
    safe_relative_path,
    split_arguments,
    worker_key,
)


@pytest.mark.parametrize(
    ("arguments", "startup", "request_args"),
    [
        (["java", "-jar", "w.jar", "@req.args"], ["java", "-jar", "w.jar"], ["@req.args"]),
        (["w", "--flagfile=a", "x"], ["w"], ["--flagfile=a", "x"]),
        (["w", "-flagfile=a"], ["w"], ["-flagfile=a"]),
        (["w", "@@literal", "@f"], ["w", "@@literal"], ["@f"]),
        (["w", "plain"], [], ["w", "plain"]),
    ],
)
def test_arguments_split_at_the_first_flag_file(
    arguments: list[str], startup: list[str], request_args: list[str]
) -> None:
    assert split_arguments(arguments) == (startup, request_args)


def test_flagfile_path() -> None:
    assert flagfile_path("@a/b.args") == "a/b.args"
    assert flagfile_path("--flagfile=x") == "x"
    assert flagfile_path("@@x") is None and flagfile_path("x") is None


def test_the_key_changes_with_every_part_and_nothing_else() -> None:
    base = worker_key([("t/w.py", "aa")], ["python3", "t/w.py"], {"A": "1"}, "proto")
    assert base == worker_key(
        [("t/w.py", "aa")], ["python3", "t/w.py", "--persistent_worker"], {"A": "1"}, "proto"
    )
    assert len({
        base,
        worker_key([("t/w.py", "bb")], ["python3", "t/w.py"], {"A": "1"}, "proto"),
        worker_key([("t/w.py", "aa")], ["python3", "-u", "t/w.py"], {"A": "1"}, "proto"),
        worker_key([("t/w.py", "aa")], ["python3", "t/w.py"], {"A": "2"}, "proto"),
        worker_key([("t/w.py", "aa")], ["python3", "t/w.py"], {"A": "1"}, "json"),
    }) == 5  # fmt: skip
    assert base == worker_key([("t/w.py", "aa")], ["python3", "t/w.py"], {"A": "1"}, "proto")


@pytest.mark.parametrize("path", ["", "/etc/passwd", "..", "../x", "a/../../x", "a/../b", "."])
def test_paths_that_leave_the_root_are_refused(path: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(path, "output path")


def test_safe_paths_are_normalised() -> None:
    assert safe_relative_path("a//b/./c", "output path") == "a/b/c"
