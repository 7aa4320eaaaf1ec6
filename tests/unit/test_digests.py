"""DigestCache: SHA-256 hex of regular files, re-hashed only when what stat says changes,
and kept only for files whose last write stat is sure to show."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.file_clock import wait_until_settled
from worker_runtime import digests
from worker_runtime.digests import DigestCache, file_clock_ns, settled
from worker_runtime.execution import quick_reads


def test_digest_is_sha256_hex_and_cached(tmp_path: Path) -> None:
    path = tmp_path / "a.hi"
    path.write_bytes(b"interface")
    wait_until_settled(path)
    cache = DigestCache()
    expected = hashlib.sha256(b"interface").hexdigest()
    assert cache.digest(str(path)) == expected
    assert cache.digest(str(path)) == expected
    assert cache.files_hashed == 1


def test_a_changed_file_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "a.hi"
    path.write_bytes(b"one")
    cache = DigestCache()
    cache.digest(str(path))
    path.write_bytes(b"two")  # same size: the mtime (or a new inode) tells
    os.utime(path, ns=(1, 1))
    assert cache.digest(str(path)) == hashlib.sha256(b"two").hexdigest()
    replacement = tmp_path / "new"
    replacement.write_bytes(b"six")
    os.utime(replacement, ns=(1, 1))
    replacement.replace(path)  # same size and mtime, another inode
    assert cache.digest(str(path)) == hashlib.sha256(b"six").hexdigest()
    assert cache.files_hashed == 3


def test_directories_and_missing_files_have_no_digest(tmp_path: Path) -> None:
    cache = DigestCache()
    assert cache.digest(str(tmp_path)) is None
    assert cache.digest(str(tmp_path / "missing")) is None
    # a name no file system name encodes (a lone surrogate) has none either: it was an
    # uncaught UnicodeEncodeError, a request answered as a bug in the runtime
    assert cache.digest(str(tmp_path / "\ud800.java")) is None


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    cache = DigestCache(max_entries=2)
    for name in "abc":
        (tmp_path / name).write_text(name)
        cache.digest(str(tmp_path / name))
    cache.digest(str(tmp_path / "a"))  # evicted: hashed again
    assert cache.files_hashed == 4


def test_a_rewrite_in_place_that_keeps_size_and_mtime_is_caught_by_ctime(tmp_path: Path) -> None:
    path = tmp_path / "tool"
    path.write_bytes(b"one")
    os.utime(path, ns=(1, 1))
    cache = DigestCache()
    cache.digest(str(path))
    time.sleep(0.05)  # the kernel's ctime clock is coarse (a tick of a few ms)
    with open(path, "r+b") as handle:  # same inode, same size
        handle.write(b"two")
    os.utime(path, ns=(1, 1))  # same mtime; the ctime moved on
    assert cache.digest(str(path)) == hashlib.sha256(b"two").hexdigest()


def test_read_says_why_a_file_has_no_digest(tmp_path: Path) -> None:
    cache = DigestCache()
    for path, reason in ((tmp_path, "not a regular file"), (tmp_path / "x", "No such file")):
        try:
            cache.read(str(path))
        except OSError as exc:
            assert reason in str(exc.strerror)
        else:
            raise AssertionError(f"{path} has a digest")


def stamped(ctime_ns: int) -> os.stat_result:
    """A stat result with this ctime (settled reads nothing else)."""
    fields = [0] * 10 + [0.0] * 3 + [0, 0, ctime_ns]  # ... st_atime_ns, st_mtime_ns, st_ctime_ns
    return os.stat_result(fields)


def test_a_stamp_is_settled_once_the_file_clock_is_a_step_past_it() -> None:
    for ctime, step in (
        (1_700_000_000_123_456_789, 1),  # nanoseconds (ext4, tmpfs, xfs, btrfs)
        (1_700_000_000_123_456_780, 10),
        (1_700_000_000_123_000_000, 1_000_000),  # milliseconds
        (1_700_000_001_000_000_000, 1_000_000_000),  # seconds (ext4 with small inodes)
        (1_700_000_000_000_000_000, 2_000_000_000),  # an even second: FAT's two
    ):
        assert stamped(ctime).st_ctime_ns == ctime
        assert not settled(stamped(ctime), ctime), ctime
        assert not settled(stamped(ctime), ctime + step - 1), ctime
        assert settled(stamped(ctime), ctime + step), ctime


def test_a_file_written_after_it_was_looked_at_is_hashed_but_not_kept(tmp_path: Path) -> None:
    """The racily clean file: had the digest been kept, a second write in the same tick,
    of the same size, would leave stat showing what it showed, and the old digest would
    stand for the new content."""
    path = tmp_path / "Generated.java"
    cache = DigestCache()
    looked_at = file_clock_ns()
    path.write_bytes(b"one")  # stamped now or later, cut to the file system's step
    info = os.stat(path)
    cache.store(str(path), info, hashlib.sha256(b"one").hexdigest(), looked_at)
    assert cache.files_hashed == 1
    assert cache.known(str(path), info) is None  # not kept: the next look hashes it again
    wait_until_settled(path)
    assert cache.digest(str(path)) == hashlib.sha256(b"one").hexdigest()
    assert cache.known(str(path), os.stat(path)) is not None  # settled: kept
    assert cache.files_hashed == 2


def test_every_way_in_takes_the_file_clock_before_its_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read() and the quick path both take the clock before they stat: with a clock that
    never passes any stamp, nothing is kept."""
    path = tmp_path / "A.java"
    path.write_bytes(b"class A {}\n")
    wait_until_settled(path)
    monkeypatch.setattr(digests, "file_clock_ns", lambda: 0)
    monkeypatch.setattr(quick_reads, "file_clock_ns", lambda: 0)
    cache = DigestCache()
    sha = hashlib.sha256(b"class A {}\n").hexdigest()
    assert cache.digest(str(path)) == sha
    root = quick_reads.QuickRoot.open(str(tmp_path))
    assert root is not None
    try:
        assert root.digest("A.java", cache, 1 << 16) == (sha, len(b"class A {}\n"))
    finally:
        root.close()
    assert cache.known(str(path), os.stat(path)) is None
    assert cache.files_hashed == 2


def test_what_is_kept_is_the_digest_of_the_file_that_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path that names another file between read()'s stat and its open: the digest is
    kept under the signature of the file read, not of the one the stat saw."""
    path = tmp_path / "current.jar"
    path.write_bytes(b"v1")
    replacement = tmp_path / "next.jar"
    replacement.write_bytes(b"v2")
    wait_until_settled(path, replacement)
    first = os.stat(path)
    real_open = os.open

    def open_after_a_swap(name: str, flags: int) -> int:
        if name == str(path):
            replacement.replace(path)  # as a release script would, between stat and open
        return real_open(name, flags)

    monkeypatch.setattr(digests.os, "open", open_after_a_swap)
    monkeypatch.setattr(digests, "file_clock_ns", lambda: 1 << 62)  # every stamp settled
    cache = DigestCache()
    assert cache.digest(str(path)) == hashlib.sha256(b"v2").hexdigest()
    assert cache.known(str(path), first) is None  # v1's signature holds nothing
    assert cache.known(str(path), os.stat(path)) == hashlib.sha256(b"v2").hexdigest()


def test_a_fifo_put_in_a_files_place_is_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "input"
    path.write_bytes(b"x")
    real_open = os.open

    def open_after_a_fifo(name: str, flags: int) -> int:
        path.unlink()
        os.mkfifo(path)  # nobody will ever write to it
        return real_open(name, flags)

    monkeypatch.setattr(digests.os, "open", open_after_a_fifo)
    with pytest.raises(OSError, match="not a regular file"):
        DigestCache().read(str(path))
