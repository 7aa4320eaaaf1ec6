"""The executor's local copy of the CAS (executor/blob_cache.py): what it saves, what it
keeps apart, and its bounds, against a CAS that counts its calls."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from worker_runtime.executor.blob_cache import BlobCache
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.remote.merkle import digest_key


def digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


class CountingCas:
    def __init__(self, instance: str = "main") -> None:
        self.instance = instance
        self.blobs: dict[tuple[str, int], bytes] = {}
        self.calls = 0
        #: Blobs past this size are streamed to their file (read_file), as ByteStream's are.
        self.batch_limit = 1 << 20
        self.streamed: list[Path] = []

    def add(self, data: bytes) -> re_pb2.Digest:
        found = digest(data)
        self.blobs[digest_key(found)] = data
        return found

    def read(self, wanted: re_pb2.Digest) -> bytes:
        self.calls += 1
        return self.blobs[digest_key(wanted)]

    def read_many(self, wanted: list[re_pb2.Digest]) -> dict[tuple[str, int], bytes]:
        self.calls += 1
        return {digest_key(d): self.blobs[digest_key(d)] for d in wanted}

    def batched(self, wanted: re_pb2.Digest) -> bool:
        return wanted.size_bytes <= self.batch_limit

    def read_file(self, wanted: re_pb2.Digest, target: Path, mode: int = 0o644) -> None:
        self.calls += 1
        self.streamed.append(target)
        target.write_bytes(self.blobs[digest_key(wanted)])

    def get_tree(self, root: re_pb2.Digest) -> list[re_pb2.Directory]:
        self.calls += 1
        found, queue = [], [root]
        while queue:
            node = re_pb2.Directory.FromString(self.blobs[digest_key(queue.pop(0))])
            found.append(node)
            queue.extend(sub.digest for sub in node.directories)
        return found


def cache(cas: CountingCas, root: Path, **limits: int) -> BlobCache:
    return BlobCache(cas, root, **limits)  # type: ignore[arg-type]


def test_a_second_action_reads_nothing_already_seen(tmp_path: Path) -> None:
    cas = CountingCas()
    blobs = cache(cas, tmp_path / "cache")
    files = [cas.add(f"class {n}".encode()) for n in range(300)]
    for action in ("a", "b"):
        (tmp_path / action).mkdir()
        blobs.place((d, tmp_path / action / f"{n}.class", False) for n, d in enumerate(files))
    assert cas.calls == 1  # the 300 files in one batch, for the first action only
    assert (tmp_path / "b" / "7.class").read_bytes() == b"class 7"


def test_directories_are_read_once_and_in_one_batch(tmp_path: Path) -> None:
    cas = CountingCas()
    blobs = cache(cas, tmp_path / "cache")
    nodes = [re_pb2.Directory(files=[re_pb2.FileNode(name=f"f{n}")]) for n in range(5)]
    digests = [cas.add(node.SerializeToString()) for node in nodes]
    assert blobs.directories(digests) == nodes
    assert blobs.directories(list(reversed(digests))) == list(reversed(nodes))
    assert cas.calls == 1


def test_files_are_copied_so_an_action_cannot_change_the_cached_copy(tmp_path: Path) -> None:
    cas = CountingCas()
    blobs = cache(cas, tmp_path / "cache")
    tool = cas.add(b"#!/bin/sh\necho tool\n")
    blobs.place([(tool, tmp_path / "first", True)])
    (tmp_path / "first").write_bytes(b"tampered")
    blobs.place([(tool, tmp_path / "second", True)])
    assert (tmp_path / "second").read_bytes() == b"#!/bin/sh\necho tool\n"
    assert (tmp_path / "second").stat().st_mode & 0o777 == 0o755


def test_the_file_store_stays_under_its_bound(tmp_path: Path) -> None:
    cas = CountingCas()
    blobs = cache(cas, tmp_path / "cache", max_file_bytes=1000)
    for n in range(20):
        data = bytes([n]) * 300
        blobs.place([(cas.add(data), tmp_path / f"out{n}", False)])
        assert (tmp_path / f"out{n}").read_bytes() == data
    stored = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert sum(p.stat().st_size for p in stored) <= 1000
    calls = cas.calls
    blobs.place([(digest(bytes([0]) * 300), tmp_path / "again", False)])  # evicted: read again
    assert cas.calls == calls + 1


def test_each_instance_has_its_own_store(tmp_path: Path) -> None:
    main = BlobCache.for_instance(CountingCas("main"), tmp_path)  # type: ignore[arg-type]
    other = BlobCache.for_instance(CountingCas("tenant-b"), tmp_path)  # type: ignore[arg-type]
    assert main.root != other.root and main.root.parent == other.root.parent == tmp_path / "blobs"


def test_a_whole_tree_comes_in_one_get_tree_call(tmp_path: Path) -> None:
    cas = CountingCas()
    blobs = cache(cas, tmp_path / "cache")
    leaf = re_pb2.Directory(files=[re_pb2.FileNode(name="A.class")])
    middle = re_pb2.Directory(
        directories=[re_pb2.DirectoryNode(name="c", digest=cas.add(leaf.SerializeToString()))]
    )
    root_node = re_pb2.Directory(
        directories=[re_pb2.DirectoryNode(name="b", digest=cas.add(middle.SerializeToString()))]
    )
    root = cas.add(root_node.SerializeToString())
    blobs.prefetch_tree(root)
    assert cas.calls == 1
    assert blobs.directories([root]) == [root_node]
    assert blobs.directories([middle.directories[0].digest]) == [leaf]
    blobs.prefetch_tree(root)  # known: no call
    assert cas.calls == 1


def test_large_inputs_are_streamed_and_small_ones_read_in_bounded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every input not yet here was read in one call, all of it in memory at once (and a
    ByteStream blob joined whole): a blob past the batch limit now goes to its file as it
    comes, and the others are read a bounded batch at a time."""
    monkeypatch.setattr("worker_runtime.executor.blob_cache.READ_CHUNK_BYTES", 1000)
    cas = CountingCas()
    blobs = cache(cas, tmp_path / "cache")
    big = cas.add(b"b" * (2 << 20))
    small = [cas.add(f"class {n:03}".encode()) for n in range(300)]  # 9 bytes each
    (tmp_path / "a").mkdir()
    wanted = [(big, tmp_path / "a" / "big", False)]
    wanted += [(d, tmp_path / "a" / f"{n}.class", False) for n, d in enumerate(small)]
    blobs.place(wanted)
    assert cas.streamed == [blobs._path(digest_key(big))]
    assert cas.calls == 1 + 3  # the big one streamed, the small ones in 3 batches
    assert (tmp_path / "a" / "big").read_bytes() == b"b" * (2 << 20)
    assert (tmp_path / "a" / "299.class").read_bytes() == b"class 299"


def test_a_check_between_reads_stops_a_placement(tmp_path: Path) -> None:
    """An action cancelled while its inputs came went on reading every blob (many 4 MiB
    batches, each large blob streamed), holding one of the executor's threads; the
    check before each read lets the cancel stop it there."""
    cas = CountingCas()
    cas.batch_limit = 4  # every blob below is streamed: one read each
    blobs = cache(cas, tmp_path / "cache")
    files = [cas.add(f"large blob {n}".encode()) for n in range(20)]
    (tmp_path / "a").mkdir()

    class Stopped(Exception):
        pass

    def check() -> None:
        if cas.calls >= 3:
            raise Stopped

    with pytest.raises(Stopped):
        blobs.place(((d, tmp_path / "a" / f"{n}", False) for n, d in enumerate(files)), check)
    assert cas.calls == 3


def test_a_directory_evicted_while_others_are_read_is_still_returned(tmp_path: Path) -> None:
    """Another action's reads evict a directory this one found cached, while this one
    waits for the directories it lacks: it still gets every message it asked for (it
    raised KeyError, which failed the action INTERNAL)."""
    cas = CountingCas()
    blobs = cache(cas, tmp_path / "cache", max_directories=2)
    nodes = [re_pb2.Directory(files=[re_pb2.FileNode(name=f"f{n}")]) for n in range(4)]
    digests = [cas.add(node.SerializeToString()) for node in nodes]
    blobs.directories(digests[:1])  # cached: the one the next call finds there
    real_read_many = cas.read_many

    def read_many_while_another_action_reads(
        wanted: list[re_pb2.Digest],
    ) -> dict[tuple[str, int], bytes]:
        if digests[1] in wanted:
            blobs.directories(digests[2:4])  # the other action: evicts digests[0]
        return real_read_many(wanted)

    cas.read_many = read_many_while_another_action_reads  # type: ignore[method-assign]
    assert blobs.directories(digests[:2]) == nodes[:2]
