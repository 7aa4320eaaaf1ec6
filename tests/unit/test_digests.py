"""DigestCache: SHA-256 hex of regular files, re-hashed only when what stat says changes."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from worker_runtime.digests import DigestCache


def test_digest_is_sha256_hex_and_cached(tmp_path: Path) -> None:
    path = tmp_path / "a.hi"
    path.write_bytes(b"interface")
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
