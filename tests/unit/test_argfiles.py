"""@argfile expansion in Python (the runtime's front and the remote executor share it): the
shared vectors of tests/vectors/argfiles.json, plus what only this implementation has."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.argfile_vectors import Case, parametrize_cases
from worker_runtime.errors import RequestError
from worker_runtime.protocol import argfiles
from worker_runtime.protocol.argfiles import expand_argfiles, split_lines


@parametrize_cases()
def test_vector(case: Case, tmp_path: Path) -> None:
    where = case.materialize(tmp_path)
    try:
        argv, error = expand_argfiles(case.command, str(where)), None
    except RequestError as exc:
        argv, error = None, str(exc)
    case.check(argv, error, "expand_argfiles")


def _example_worker() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "examples" / "text_stats" / "text_stats_worker.py"
    spec = importlib.util.spec_from_file_location("text_stats_worker", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@parametrize_cases()
def test_vector_in_the_example_worker(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/text_stats's one-shot mode (its fallback) reads argfiles by the same rule."""
    worker = _example_worker()
    monkeypatch.chdir(case.materialize(tmp_path))
    try:
        argv, error = worker.expand(case.command), None
    except worker.ArgfileError as exc:
        argv, error = None, str(exc)
    case.check(argv, error, "text_stats_worker")


def test_no_argfile_returns_same_list(tmp_path: Path) -> None:
    args = ["a", "b", "@@c", "--flagfile=d"]
    assert expand_argfiles(args, str(tmp_path)) is args


def test_relative_cwd_and_absolute_paths(tmp_path: Path) -> None:
    (tmp_path / "a.args").write_text("x\n")
    assert expand_argfiles([f"@{tmp_path / 'a.args'}"], "/") == ["x"]
    assert expand_argfiles(["@a.args"], str(tmp_path)) == ["x"]


def test_missing_argfile_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match=r"'nope\.args' does not exist \(looked in .*declare it"):
        expand_argfiles(["@nope.args"], str(tmp_path))


def test_an_argfile_name_with_a_nul_is_a_request_error(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x\n")
    for confined in (False, True):
        with pytest.raises(RequestError, match=r"'a\\x00b' cannot exist: no file name holds"):
            expand_argfiles(["@a\0b"], str(tmp_path), confined=confined)


def test_non_utf8_argfile_shows_the_bytes(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(RequestError, match=r"not valid UTF-8 \(byte 3: b'\\xff\\xfe\\n'\)"):
        expand_argfiles(["@bad"], str(tmp_path))


@pytest.mark.parametrize(
    "name", ["/etc/hostname", "../outside.args", "sub/../../outside.args", "sub/../a.args"]
)
def test_confined_refuses_paths_outside_the_root(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.args").write_text("x\n")
    (tmp_path / "outside.args").write_text("secret\n")
    with pytest.raises(RequestError, match="outside the action's directory"):
        expand_argfiles([f"@{name}"], str(root), confined=True)
    (root / "nested.args").write_text(f"@{name}\n")
    with pytest.raises(RequestError, match="outside the action's directory"):
        expand_argfiles(["@nested.args"], str(root), confined=True)


def test_confined_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.args").write_text("secret\n")
    (root / "link.args").symlink_to(tmp_path / "outside.args")
    with pytest.raises(RequestError, match="outside the action's directory"):
        expand_argfiles(["@link.args"], str(root), confined=True)
    assert expand_argfiles(["@link.args"], str(root)) == ["secret"]


def test_split_lines_matches_the_rule() -> None:
    assert split_lines("") == []
    assert split_lines("\n") == [""]
    assert split_lines("a\r\n\rb\u2028c") == ["a", "", "b\u2028c"]


@pytest.mark.parametrize("line_break", ["\n", "\r", "\x85", "\u2028", "\u2029"])
def test_a_label_with_any_of_javas_line_breaks_is_expanded_as_bazel_expands_it(
    tmp_path: Path, line_break: str
) -> None:
    """Bazel's label test is Java's regex ``^@.*//.*``: ``.`` matches none of these, so
    ``@d//a<break>`` is an argfile to Bazel (the vectors hold the ASCII ones only: the
    Java worker's paths cannot hold the others under every locale)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / f"a{line_break}").write_text("expanded\n")
    assert expand_argfiles([f"@d//a{line_break}"], str(tmp_path)) == ["expanded"]
    assert expand_argfiles(["@d//a\u2027"], str(tmp_path)) == ["@d//a\u2027"]  # no break


def test_argfiles_that_name_each_other_many_times_stop_at_the_reads_bound(
    tmp_path: Path,
) -> None:
    """Sixteen files of ten lines each naming the next (160 lines in all) expand to 10^15
    arguments: the expansion never ended while it took the process's memory (the
    executor expands what any client sends). Empty leaves too: the reads are bounded."""
    for level in range(16):
        (tmp_path / f"f{level}").write_text(f"@f{level + 1}\n" * 10 if level < 15 else "")
    with pytest.raises(RequestError, match=r"read more than 10,000 times .* name each file once"):
        expand_argfiles(["@f0"], str(tmp_path), confined=True)


def test_argfiles_that_expand_past_the_size_bound_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(argfiles, "MAX_EXPANSION_BYTES", 1 << 20)
    (tmp_path / "leaf").write_text("x" * 1000 + "\n")
    (tmp_path / "fan").write_text("@leaf\n" * 2000)
    with pytest.raises(RequestError, match="expand to more than 1 MiB of arguments"):
        expand_argfiles(["@fan"], str(tmp_path))
    assert len(expand_argfiles(["@leaf"], str(tmp_path))) == 1


def test_an_argfile_that_never_ends_is_read_only_to_the_bound(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`@/dev/zero` was read whole: the runtime's memory until it ran out."""
    monkeypatch.setattr(argfiles, "MAX_EXPANSION_BYTES", 1 << 20)
    with pytest.raises(RequestError, match="expand to more than 1 MiB"):
        expand_argfiles(["@/dev/zero"], str(tmp_path))
