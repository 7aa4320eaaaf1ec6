"""An input root that names one directory under several names expands to a tree far
larger than its blobs: the executor places at most MAX_INPUT_ENTRIES files and
directories for one action and fails the rest as the action's own fault (INVALID_ARGUMENT,
not retried). Run through the real ActionRunner on the stand-in store of
test_executor_action_faults; and each directory's checks made once in the executor's copy
of the CAS, not once per action."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import pytest

from tests.unit.test_blob_cache import CountingCas
from tests.unit.test_executor_action_faults import StoredBlobs, run
from worker_runtime.executor import runner
from worker_runtime.executor.blob_cache import BlobCache
from worker_runtime.executor.runner import ActionError, ActionRunner
from worker_runtime.executor.workers import WorkerPool
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.remote.cas import Cas


def doubling_tree(store: StoredBlobs, levels: int) -> re_pb2.Action:
    """A root of ``levels`` directories each naming the one below twice (`a` and `b`):
    2**levels copies of one file, from levels + 1 Directory blobs."""
    node = re_pb2.Directory()
    node.files.add(name="f", digest=store.put(b"one file"))
    for _ in range(levels):
        digest = store.put(node.SerializeToString())
        node = re_pb2.Directory()
        node.directories.add(name="a", digest=digest)
        node.directories.add(name="b", digest=digest)
    command = re_pb2.Command(arguments=["true"])
    return re_pb2.Action(
        command_digest=store.put(command.SerializeToString()),
        input_root_digest=store.put(node.SerializeToString()),
    )


def test_an_input_root_that_expands_past_the_limit_fails_as_the_actions_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "MAX_INPUT_ENTRIES", 100)
    store = StoredBlobs()
    assert run(tmp_path, doubling_tree(store, 4), store).exit_code == 0  # 46 entries: run
    made: list[Path] = []
    real_mkdir = Path.mkdir

    def counted(self: Path, *args: object, **kwargs: object) -> None:
        made.append(self)
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", counted)
    with pytest.raises(ActionError, match="more than 100 files and directories once expanded"):
        run(tmp_path, doubling_tree(store, 30), store)  # 2**30 files from 31 blobs
    assert len(made) < 200, "the tree was placed far past the limit before it was refused"


def action_with_root(store: StoredBlobs, root: bytes) -> re_pb2.Action:
    command = re_pb2.Command(arguments=["sh", "-c", "echo ran > ran"], output_paths=["ran"])
    return re_pb2.Action(
        command_digest=store.put(command.SerializeToString()),
        input_root_digest=store.put(root),
    )


def test_a_blob_that_is_not_a_directory_is_refused_not_run_empty(tmp_path: Path) -> None:
    store = StoredBlobs()
    # An Action's blob where its input root's belongs parses as a Directory: a file and a
    # directory named by the two digests' hashes, their sizes in fields FileNode and
    # DirectoryNode do not have, and their digests empty.
    wrong = action_with_root(store, re_pb2.Directory().SerializeToString()).SerializeToString()
    parsed = re_pb2.Directory.FromString(wrong)
    assert len(parsed.files) == 1 and len(parsed.directories) == 1
    with pytest.raises(ActionError, match="root directory of its input root is not a Directory"):
        run(tmp_path, action_with_root(store, wrong), store)
    text = b"hxhx"  # and text that happens to parse
    below = re_pb2.Directory()
    below.directories.add(name="src", digest=store.put(text))
    with pytest.raises(ActionError, match="directory 'src/' of its input root is not a Dir"):
        run(tmp_path, action_with_root(store, below.SerializeToString()), store)
    # Nothing was left behind by the refused actions.
    assert not list((tmp_path / "actions").iterdir())


def test_a_malformed_digest_is_the_actions_fault_not_a_missing_blob(tmp_path: Path) -> None:
    store = StoredBlobs()
    for bad in (
        re_pb2.Digest(hash="../../etc/passwd", size_bytes=3),
        re_pb2.Digest(hash="A" * 64, size_bytes=3),  # upper case: not what SHA-256 hex is
        re_pb2.Digest(hash="a" * 64, size_bytes=-1),
    ):
        root = re_pb2.Directory()
        root.files.add(name="in.txt", digest=bad)
        with pytest.raises(ActionError, match=r"'in\.txt' in the input root names the digest"):
            run(tmp_path, action_with_root(store, root.SerializeToString()), store)
        root = re_pb2.Directory()
        root.directories.add(name="d", digest=bad)
        with pytest.raises(ActionError, match="'d/' in the input root names the digest"):
            run(tmp_path, action_with_root(store, root.SerializeToString()), store)
    action = action_with_root(store, re_pb2.Directory().SerializeToString())
    action.command_digest.hash = "not hex"
    with pytest.raises(ActionError, match="its command names the digest 'not hex'/"):
        run(tmp_path, action, store)


def test_a_well_formed_root_still_runs(tmp_path: Path) -> None:
    store = StoredBlobs()
    root = re_pb2.Directory()
    root.files.add(name="in.txt", digest=store.put(b"data"))
    result = run(tmp_path, action_with_root(store, root.SerializeToString()), store)
    assert result.exit_code == 0 and [f.path for f in result.output_files] == ["ran"]


def run_on_a_blob_cache(
    tmp_path: Path, action: re_pb2.Action, store: StoredBlobs, blobs: BlobCache
) -> re_pb2.ActionResult:
    """``run``, with the executor's real copy of the CAS (``blobs``) in front of ``store``."""
    pool = WorkerPool(tmp_path / "workers", 1, None, 60)
    stand_in: Any = store
    try:
        return (
            ActionRunner(cast(Cas, stand_in), blobs, pool, tmp_path, "bot")
            .run(action, "main", threading.Event())
            .result
        )
    finally:
        pool.stop_all()


def test_the_executors_copy_of_a_directory_is_checked_once_and_a_bad_one_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory every action carries (a worker's few hundred class files) was checked
    again for each: names, digests, unknown fields, a few microseconds an entry. Its
    message in the executor's copy is checked once; one that fails is refused every time,
    and one read again (evicted, then read back) is checked again."""
    store = StoredBlobs()
    cas: Any = CountingCas()
    cas.blobs = store.data  # one store under both: the runner's CAS and the cache's
    blobs = BlobCache(cas, tmp_path / "cache", max_directories=2)
    checked: list[str] = []
    real_check = runner._check_directory

    def counted(node: re_pb2.Directory, prefix: str) -> None:
        checked.append(prefix)
        real_check(node, prefix)

    monkeypatch.setattr(runner, "_check_directory", counted)
    lib = re_pb2.Directory()
    lib.files.add(name="W.class", digest=store.put(b"class W"))
    root = re_pb2.Directory()
    root.directories.add(name="lib", digest=store.put(lib.SerializeToString()))
    action = action_with_root(store, root.SerializeToString())
    for _ in range(3):
        assert run_on_a_blob_cache(tmp_path, action, store, blobs).exit_code == 0
    assert checked == ["", "lib/"]
    bad = re_pb2.Directory()
    bad.files.add(name="x", digest=store.put(b"1"))
    bad.files.add(name="x", digest=store.put(b"2"))
    for _ in range(2):
        with pytest.raises(ActionError, match="'x' appears twice in the input root"):
            run_on_a_blob_cache(
                tmp_path, action_with_root(store, bad.SerializeToString()), store, blobs
            )
    assert checked == ["", "lib/", "", ""]
    # The bad root took the cache's room (two directories): the good ones are read again.
    assert run_on_a_blob_cache(tmp_path, action, store, blobs).exit_code == 0
    assert checked == ["", "lib/", "", "", "", "lib/"]
