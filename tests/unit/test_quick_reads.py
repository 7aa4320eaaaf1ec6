"""Quick reads on the event loop (worker_runtime/execution/quick_reads.py): @argfiles,
envelopes and known digests give what the full reads give, or decline (None) wherever a
read could wait or the full read has something to say (nesting, errors)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.argfile_vectors import CASES, Case, parametrize_cases
from tests.file_clock import wait_until_settled
from worker_runtime.digests import DigestCache
from worker_runtime.envelope import Envelope, read_envelope, write_envelope
from worker_runtime.errors import RequestError
from worker_runtime.execution import quick_reads
from worker_runtime.execution.quick_reads import (
    MAX_QUICK_BYTES,
    QuickRoot,
    file_system_type,
    quick_root,
)
from worker_runtime.protocol.argfiles import expand_argfiles


@pytest.fixture
def root(tmp_path: Path) -> Iterator[QuickRoot]:
    quick = QuickRoot.open(str(tmp_path))
    assert quick is not None, "this machine kind's /tmp is a local file system with openat2"
    yield quick
    quick.close()


@parametrize_cases()
def test_a_quick_expansion_is_the_full_one_or_none(case: Case, tmp_path: Path) -> None:
    where = case.materialize(tmp_path)
    quick = QuickRoot.open(str(where))
    assert quick is not None
    try:
        got = quick.expand(tuple(case.command))
    finally:
        quick.close()
    try:
        full: list[str] | None = expand_argfiles(list(case.command), str(where))
    except RequestError:
        full = None
    if full is None:
        assert got is None, f"{case.name}: the full expansion fails, the quick one must decline"
    elif got is not None:
        assert got == full, case.name


def test_the_vectors_take_the_quick_path_where_they_can(tmp_path: Path) -> None:
    """Not every case declines: a plain relative argfile is read quickly."""
    taken = 0
    for case in CASES:
        where = case.materialize(tmp_path)
        quick = QuickRoot.open(str(where))
        assert quick is not None
        try:
            taken += quick.expand(tuple(case.command)) is not None
        finally:
            quick.close()
    assert taken >= 3


def test_a_relative_argfile_is_read_at_once(root: QuickRoot, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.args").write_text("-c\r\nx y\n\nlast")
    assert root.expand(("tool", "@out/a.args", "@@literal")) == [
        "tool",
        "-c",
        "x y",
        "",
        "last",
        "@@literal",
    ]


def test_absolute_paths_are_left_to_the_full_expansion(root: QuickRoot, tmp_path: Path) -> None:
    (tmp_path / "a.args").write_text("x\n")
    assert root.read(str(tmp_path / "a.args")) is None
    assert root.expand((f"@{tmp_path / 'a.args'}",)) is None


def test_a_fifo_is_seen_and_not_waited_for(root: QuickRoot, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "args.fifo")
    assert root.read("args.fifo") is None  # no writer: a blocking open would never return


def test_a_large_argfile_is_read_off_the_loop(root: QuickRoot, tmp_path: Path) -> None:
    (tmp_path / "big.args").write_text("x\n" * (MAX_QUICK_BYTES // 2 + 1))
    (tmp_path / "small.args").write_text("x\n" * 10)
    assert root.read("big.args") is None
    assert root.read("small.args") == "x\n" * 10


def test_what_the_full_expansion_reports_is_left_to_it(root: QuickRoot, tmp_path: Path) -> None:
    (tmp_path / "nul.args").write_bytes(b"a\0b\n")
    (tmp_path / "latin1.args").write_bytes(b"caf\xe9\n")
    (tmp_path / "outer.args").write_text("x\n@inner.args\n")
    (tmp_path / "inner.args").write_text("y\n")
    assert root.read("missing.args") is None
    assert root.read("nul.args") is None
    assert root.read("latin1.args") is None
    assert root.read("outer.args") == "x\n@inner.args\n"
    assert root.expand(("@outer.args",)) is None  # nested: the full expansion's cycle checks


def test_a_path_that_leaves_the_file_system_is_not_followed(
    root: QuickRoot, tmp_path: Path
) -> None:
    """/proc is another mount: a symlink into it fails to open beneath the root."""
    os.symlink("/proc/self/status", tmp_path / "elsewhere.args")
    assert root.read("elsewhere.args") is None


def test_no_quick_reads_beneath_a_network_file_system(tmp_path: Path) -> None:
    device = os.stat(tmp_path).st_dev
    fake = tmp_path / "mountinfo"
    fake.write_text(
        f"27 1 {os.major(device)}:{os.minor(device)} / / rw,relatime - nfs4 server:/export rw\n"
    )
    assert QuickRoot.open(str(tmp_path), str(fake)) is None
    fd = os.open(tmp_path, os.O_PATH)
    try:
        assert file_system_type(fd, str(fake)) == "nfs4"
        assert file_system_type(fd) in {"ext4", "tmpfs", "xfs", "btrfs", "overlay"}
    finally:
        os.close(fd)


def test_a_root_that_cannot_be_opened_has_no_quick_reads(tmp_path: Path) -> None:
    assert QuickRoot.open(str(tmp_path / "missing")) is None
    (tmp_path / "file").write_text("")
    assert QuickRoot.open(str(tmp_path / "file")) is None


def test_a_root_moved_away_and_made_again_is_opened_again(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "a.args").write_text("old\n")
    first = quick_root(str(project))
    assert first is not None and first.expand(("@a.args",)) == ["old"]
    project.rename(tmp_path / "moved")
    project.mkdir()
    (project / "a.args").write_text("new\n")
    again = quick_root(str(project))
    assert again is not None and again is not first
    assert again.expand(("@a.args",)) == ["new"]
    assert quick_root(str(project)) is again
    again.close()


def test_a_digest_is_known_only_for_the_file_as_it_was_hashed(
    root: QuickRoot, tmp_path: Path
) -> None:
    cache = DigestCache()
    (tmp_path / "src").mkdir()
    source = tmp_path / "src" / "A.java"
    source.write_text("class A {}\n")
    wait_until_settled(source)
    assert root.digest("src/A.java", cache) is None  # never hashed, and no bytes allowed
    assert cache.files_hashed == 0
    hashed = cache.read(os.path.join(root.root, "src/A.java"))
    assert root.digest("src/A.java", cache) == (hashed, 0)
    source.write_text("class A { int x; }\n")
    assert root.digest("src/A.java", cache) is None  # changed since
    assert cache.files_hashed == 1


def test_a_small_file_is_hashed_at_once_and_then_known(root: QuickRoot, tmp_path: Path) -> None:
    cache = DigestCache()
    content = b"class A {}\n"
    (tmp_path / "A.java").write_bytes(content)
    wait_until_settled(tmp_path / "A.java")
    sha = hashlib.sha256(content).hexdigest()
    assert root.digest("A.java", cache, len(content) - 1) is None  # over the budget
    assert root.digest("A.java", cache, len(content)) == (sha, len(content))
    assert root.digest("A.java", cache) == (sha, 0)
    assert cache.files_hashed == 1
    assert cache.read(str(tmp_path / "A.java")) == sha  # the slow path finds it kept
    assert cache.files_hashed == 1


def test_a_digest_is_kept_under_the_name_the_slow_path_looks_for(tmp_path: Path) -> None:
    """The cache's key is os.path.join(root, name), however the root was spelled."""
    (tmp_path / "A.java").write_text("class A {}\n")
    wait_until_settled(tmp_path / "A.java")
    for spelling in (str(tmp_path), str(tmp_path) + "/"):
        cache = DigestCache()
        root = QuickRoot.open(spelling)
        assert root is not None
        try:
            found = root.digest("A.java", cache, 1 << 16)
            assert found is not None
            assert cache.read(os.path.join(spelling, "A.java")) == found[0]
            assert cache.files_hashed == 1  # found, not hashed again
        finally:
            root.close()


def test_digests_that_would_need_a_wait_are_not_taken(root: QuickRoot, tmp_path: Path) -> None:
    cache = DigestCache()
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "in.fifo")  # no writer: opening it to read could wait
    (tmp_path / "a.txt").write_text("a")
    cache.read(str(tmp_path / "a.txt"))
    budget = 1 << 20
    assert root.digest(str(tmp_path / "a.txt"), cache, budget) is None  # absolute
    assert root.digest("a.txt", cache, budget) is not None
    assert root.digest("missing.txt", cache, budget) is None
    assert root.digest("dir", cache, budget) is None
    assert root.digest("in.fifo", cache, budget) is None
    os.symlink("/proc/self/status", tmp_path / "elsewhere")
    assert root.digest("elsewhere", cache, budget) is None  # another mount


def test_an_envelope_is_read_at_once_as_the_full_reader_reads_it(
    root: QuickRoot, tmp_path: Path
) -> None:
    envelope = Envelope("a.args", ("src/A.java", "lib/b.jar"), ("out/a.jar",))
    write_envelope(tmp_path / "a.envelope.json", envelope)
    assert root.envelope("a.envelope.json") == envelope
    assert read_envelope("a.envelope.json", str(tmp_path)) == envelope
    (tmp_path / "bad.json").write_text('{"version": 1, "argfile": 3}')
    (tmp_path / "old.json").write_text('{"version": 0}')
    for name in ("bad.json", "old.json", "missing.json"):
        with pytest.raises(RequestError):
            read_envelope(name, str(tmp_path))
        assert root.envelope(name) is None  # the slow path says what is wrong


def test_without_resolve_cached_reads_go_on_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel before 5.12 answers EINVAL to RESOLVE_CACHED: the root works without it
    (a bit no kernel knows stands in for it here)."""
    monkeypatch.setattr(quick_reads, "_RESOLVE_CACHED", 1 << 40)
    quick = QuickRoot.open(str(tmp_path))
    assert quick is not None
    try:
        (tmp_path / "a.args").write_text("x\n")
        assert quick.expand(("@a.args",)) == ["x"]
    finally:
        quick.close()


def test_an_expansion_past_the_full_ones_bounds_is_left_to_it(
    root: QuickRoot, tmp_path: Path
) -> None:
    """One 60 KB argfile named 20,000 times expanded here to 600 million arguments, past
    what the full expansion refuses (docs/argfiles.md)."""
    (tmp_path / "a.args").write_text("x\n" * 30_000)
    assert root.expand(("@a.args",) * 10) is not None
    many = ("@a.args",) * 20_000
    assert root.expand(many) is None
    with pytest.raises(RequestError, match="expand to more than 256 MiB of arguments"):
        expand_argfiles(list(many), str(tmp_path))
