"""The remote persistent worker convention: argument split, the request's arguments (the
shared @argfile vectors, as the executor expands them), worker key, safe paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.argfile_vectors import Case, parametrize_cases
from worker_runtime.errors import RequestError
from worker_runtime.remote.convention import (
    UnsafePathError,
    request_arguments,
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


@parametrize_cases()
def test_request_arguments_follow_the_argfile_vectors(case: Case, tmp_path: Path) -> None:
    """What the executor puts in WorkRequest.arguments: the one rule, as the runtime's front
    (and the javac worker or ghc-argfile one-shot on the same action) would have it."""
    where = case.materialize(tmp_path)
    startup, request = split_arguments(["tool", "--startup", *case.command])
    try:
        argv, error = request_arguments(request, str(where)), None
    except RequestError as exc:
        argv, error = None, str(exc)
    if not startup:  # no flag file: not a worker request, it runs one-shot as it is
        assert request == ["tool", "--startup", *case.command]
        return
    # The request starts at the first flag file; the startup arguments before it stay.
    assert startup[:2] == ["tool", "--startup"]
    case.check(None if argv is None else [*startup[2:], *argv], error, "request_arguments")


def test_request_arguments_stay_under_the_input_root(tmp_path: Path) -> None:
    (tmp_path / "outside.args").write_text("secret\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / "in.args").write_text("@../outside.args\n")
    for argument in ("@../outside.args", f"@{tmp_path}/outside.args", "@in.args"):
        with pytest.raises(RequestError, match="outside the action's directory"):
            request_arguments([argument], str(root))


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


def test_per_action_variables_are_not_part_of_a_worker_s_environment_or_key() -> None:
    """Buck2 gives every action its own BUCK_SCRATCH_PATH, and worker_run its own envelope:
    with them in the key, no two actions would share a worker."""
    from worker_runtime.remote.convention import worker_environment, worker_key

    one = {"LANG": "C", "BUCK_SCRATCH_PATH": "buck-out/v2/tmp/a", "WORKER_RUNTIME_ENVELOPE": "a"}
    two = {"LANG": "C", "BUCK_SCRATCH_PATH": "buck-out/v2/tmp/b", "WORKER_RUNTIME_ENVELOPE": "b"}
    assert worker_environment(one) == {"LANG": "C"}
    assert worker_key([], ["w"], one, "proto") == worker_key([], ["w"], two, "proto")
    assert worker_key([], ["w"], one, "proto") != worker_key([], ["w"], {"LANG": "D"}, "proto")
