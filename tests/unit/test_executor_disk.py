"""The executor's disk limit (``--limit-disk``): what an action adds to its directory
(and its stdout and stderr) is measured while it runs and when it ends, never through a
symlink, each inode once; one that passes the limit is stopped and fails
RESOURCE_EXHAUSTED, one-shot or on a persistent worker, and its inputs do not count.
Also: a one-shot action killed by a signal reports 128 + N, as the sandbox does. Run
through the real ActionRunner, on the blob stand-in of test_executor_action_faults."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from tests.unit.test_executor_action_faults import StoredBlobs, action_of, persistent_action
from worker_runtime.executor import disk
from worker_runtime.executor.blob_cache import BlobCache
from worker_runtime.executor.disk import DiskWatch, Usage, default_tenant_disk_mb, measure
from worker_runtime.executor.removal import remove_tree
from worker_runtime.executor.runner import (
    RESOURCE_EXHAUSTED,
    ActionCancelled,
    ActionNotRun,
    ActionRunner,
)
from worker_runtime.executor.workers import WorkerPool
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.remote.cas import Cas

MB = 1 << 20


def limited_runner(
    tmp_path: Path, store: StoredBlobs, disk_limit_mb: int | None = 1
) -> tuple[ActionRunner, WorkerPool]:
    """An ActionRunner with a disk limit, and its pool of one worker (stopped by the caller)."""
    pool = WorkerPool(tmp_path / "workers", 1, None, 60)
    stand_in: Any = store
    runner = ActionRunner(
        cast(Cas, stand_in), cast(BlobCache, stand_in), pool, tmp_path, "bot-under-test",
        disk_limit_mb=disk_limit_mb,
    )  # fmt: skip
    return runner, pool


def run_limited(
    tmp_path: Path, action: re_pb2.Action, store: StoredBlobs, disk_limit_mb: int | None = 1
) -> re_pb2.ActionResult:
    runner, pool = limited_runner(tmp_path, store, disk_limit_mb)
    try:
        return runner.run(action, "main", threading.Event()).result
    finally:
        pool.stop_all()


def refused(tmp_path: Path, action: re_pb2.Action, store: StoredBlobs) -> str:
    with pytest.raises(ActionNotRun) as stopped:
        run_limited(tmp_path, action, store)
    assert stopped.value.code == RESOURCE_EXHAUSTED
    assert "--limit-disk" in str(stopped.value)
    return str(stopped.value)


def test_what_a_directory_holds_is_counted_once_and_never_through_a_symlink(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"x" * (4 * MB))
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data").write_bytes(b"y" * MB)
    os.link(tree / "sub" / "data", tree / "again")  # a second name: no more disk
    (tree / "link").symlink_to(outside)
    (tree / "dirlink").symlink_to(tmp_path)
    usage = measure(tree)
    assert usage is not None and usage.entries == 5 and not usage.unmeasurable
    assert MB <= usage.bytes < 2 * MB  # the data once, the directories' blocks, no outside
    # Past either bound the walk stops early, its figure past it too.
    early = measure(tree, stop_past=Usage(bytes=10 * MB, entries=1))
    assert early is not None and early.entries > 1
    assert measure(tree, interrupted=lambda: True) is None
    assert measure(tmp_path / "gone") == Usage()


def test_a_tree_nesting_past_path_max_is_unmeasurable(tmp_path: Path) -> None:
    deep = tmp_path / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):  # 20 x 256 bytes: past PATH_MAX (4,096)
            os.mkdir("d" * 255, dir_fd=fd)
            below = os.open("d" * 255, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
    finally:
        os.close(fd)
    try:
        usage = measure(deep)
        assert usage is not None and "a path of more than" in usage.unmeasurable
    finally:
        remove_tree(deep)


def test_a_walk_goes_through_no_symlink_and_stops_inside_a_wide_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened below the root through no symlink at all (a tenant's symlink put in place
    of a directory mid-walk once had root open what it pointed at, the last component
    alone being O_NOFOLLOW); one wide directory no longer walked to its end past the
    bound; a directory the executor may not read counts as passing (not root: the
    tenant's doing), not as nothing."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(disk._open_below(root_fd, "real/sub"))
        assert disk._openat2[0], "openat2 is unavailable: this test needs it (Linux 5.6)"
        with pytest.raises(OSError) as refused:
            disk._open_below(root_fd, "link/sub")
        assert refused.value.errno in (errno.ELOOP, errno.EXDEV)
    finally:
        os.close(root_fd)
    wide = tmp_path / "wide"
    wide.mkdir()
    for number in range(10_000):
        (wide / str(number)).touch()
    usage = measure(wide, stop_past=Usage(bytes=1 << 40, entries=100))
    assert usage is not None and 100 < usage.entries < 10_000

    def unreadable(root_fd: int, relative: str) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", relative)

    monkeypatch.setattr(disk, "_open_below", unreadable)
    usage = measure(tmp_path)
    assert usage is not None and "cannot be read (Permission denied)" in usage.unmeasurable


@pytest.mark.needs_root("it measures as another uid (seteuid)")
def test_what_the_executor_may_not_read_or_search_counts_as_passing() -> None:
    """Not root (--limit-disk without tenants): a directory it may read but not search
    raised from the walk (INTERNAL at the end, retried elsewhere), and one it may not
    open at all the same; both count as passing the limit now."""
    top = Path(tempfile.mkdtemp(prefix="wr-disk-"))
    try:
        top.chmod(0o755)
        for name, mode in (("unsearchable", 0o644), ("closed", 0o000)):
            tree = top / name
            (tree / "sub").mkdir(parents=True)
            (tree / "sub" / "file").write_bytes(b"x")
            for path in (tree, tree / "sub", tree / "sub" / "file"):
                os.chown(path, 65534, 65534)
            (tree / "sub").chmod(mode)
        os.setegid(65534)
        os.seteuid(65534)
        try:
            seen = {name: measure(top / name) for name in ("unsearchable", "closed")}
            whole = measure(top / "closed" / "sub")
        finally:
            os.seteuid(0)
            os.setegid(0)
        for usage in seen.values():
            assert usage is not None and "cannot be read (Permission denied)" in usage.unmeasurable
        assert whole is not None and "it cannot be read" in whole.unmeasurable
    finally:
        shutil.rmtree(top)


def test_the_tenant_default_is_a_share_of_the_work_directorys_file_system(
    tmp_path: Path,
) -> None:
    info = os.statvfs(tmp_path)
    share = int(info.f_blocks * info.f_frsize * disk.DEFAULT_TENANT_DISK_SHARE) >> 20
    assert default_tenant_disk_mb(tmp_path / "not" / "made" / "yet") == max(1, share)


def test_an_action_within_its_limit_runs_and_its_inputs_do_not_count(tmp_path: Path) -> None:
    store = StoredBlobs()
    action = action_of(
        store, "head -c 100000 /dev/zero > out", ["out"], {"big-input": b"i" * (3 * MB)}
    )
    result = run_limited(tmp_path, action, store)
    assert result.exit_code == 0 and result.output_files[0].path == "out"


@pytest.mark.parametrize(
    ("script", "passed"),
    [
        # Ends before the first look: the look at its end catches it.
        ("head -c 3000000 /dev/zero > out", "it wrote more than 1 MB"),
        # Its stdout, kept in the executor's own file, counts too.
        ("head -c 3000000 /dev/zero", "it wrote more than 1 MB"),
        # Still running: stopped by the watch (else it would run into its timeout).
        ("head -c 3000000 /dev/zero > out; exec sleep 60", "it wrote more than 1 MB"),
    ],
)
def test_a_one_shot_action_past_its_limit_fails_resource_exhausted(
    tmp_path: Path, script: str, passed: str
) -> None:
    store = StoredBlobs()
    message = refused(tmp_path, action_of(store, script, ["out"], {}), store)
    assert passed in message and "make it write less" in message


def test_too_many_new_entries_pass_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk, "MAX_NEW_ENTRIES", 50)
    store = StoredBlobs()
    action = action_of(store, "mkdir d && cd d && touch $(seq 1 100)", [], {})
    assert "it made more than 50 files and directories" in refused(tmp_path, action, store)


@pytest.mark.parametrize(
    "request_text",
    [
        "--fill\nbig\n3\n--out\no.txt\nin.txt\n",  # answered: the look at its end
        "--fill\nbig\n3\n--sleep\n60\n--out\no.txt\nin.txt\n",  # stopped while it works
    ],
)
def test_a_persistent_request_past_its_limit_fails_resource_exhausted(
    tmp_path: Path, request_text: str
) -> None:
    store = StoredBlobs()
    message = refused(tmp_path, persistent_action(store, request_text), store)
    assert "it wrote more than 1 MB" in message
    within = run_limited(tmp_path, persistent_action(store, "--out\no.txt\nin.txt\n"), store)
    assert within.exit_code == 0


def test_a_worker_that_filled_its_home_is_discarded_and_one_that_did_not_is_kept(
    tmp_path: Path,
) -> None:
    """Its home outlives the request: what the worker wrote there would count against
    every later request of its key, so that worker goes, its home with it."""
    store = StoredBlobs()
    runner, pool = limited_runner(tmp_path, store)

    def run(request: str) -> int:
        return runner.run(persistent_action(store, request), "main").worker_pid

    try:
        first = run("--out\no.txt\nin.txt\n")
        with pytest.raises(ActionNotRun) as stopped:  # in the request's directory only
            run("--fill\nbig\n3\n--out\no.txt\nin.txt\n")
        assert "discarded" not in str(stopped.value)
        assert run("--out\no.txt\nin.txt\n") == first
        with pytest.raises(ActionNotRun) as stopped:
            run("--fill-home\nbig\n3\n--out\no.txt\nin.txt\n")
        assert "its persistent worker is discarded, with its home" in str(stopped.value)
        assert pool.pids() == []
        assert run("--out\no.txt\nin.txt\n") != first
    finally:
        pool.stop_all()


def test_a_cancel_still_reaches_an_action_under_a_disk_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch stands between the lease's cancel and a persistent worker's call: the
    action is cancelled, its worker released, and no watch is left running. A one-shot
    action's wait looks at the cancel itself, whatever its watch does."""
    cancelled = threading.Event()
    watch = DiskWatch(tmp_path, MB, cancelled)
    cancelled.set()
    assert watch.stop.wait(10) and not watch.finish()

    store = StoredBlobs()
    runner, pool = limited_runner(tmp_path, store)
    lease = threading.Event()
    watching = DiskWatch.__init__

    def cancelled_once_watched(watch: DiskWatch, *args: Any, **kwargs: Any) -> None:
        watching(watch, *args, **kwargs)
        threading.Timer(0.5, lease.set).start()  # the lease cancelled under the watch

    monkeypatch.setattr(DiskWatch, "__init__", cancelled_once_watched)
    try:
        with pytest.raises(ActionCancelled):  # singleplex: killed, and not kept
            runner.run(persistent_action(store, "--sleep\n60\n--out\no.txt\nin.txt\n"),
                       "main", lease)  # fmt: skip
        assert pool.pids() == []  # released: discarded, its place under the cap freed
        lease.clear()
        monkeypatch.setattr(DiskWatch, "_watch", lambda watch: None)  # a watch that is stuck
        with pytest.raises(ActionCancelled):
            runner.run(action_of(store, "exec sleep 60", [], {}), "main", lease)
    finally:
        pool.stop_all()
    assert not [t for t in threading.enumerate() if t.name == "disk-watch"]


def test_a_worker_that_fills_the_disk_and_then_fails_is_the_disks_case(tmp_path: Path) -> None:
    """It was INTERNAL (the worker failed), which the server runs again elsewhere."""
    store = StoredBlobs()
    message = refused(tmp_path, persistent_action(store, "--fill\nbig\n3\n--exit\n"), store)
    assert "it wrote more than 1 MB" in message


def test_a_one_shot_action_killed_by_a_signal_reports_128_plus_its_number(
    tmp_path: Path,
) -> None:
    """It was -N without the sandbox and 128 + N inside it (bubblewrap's report)."""
    store = StoredBlobs()
    for limit in (None, 1):
        result = run_limited(tmp_path, action_of(store, "kill -TERM $$", [], {}), store, limit)
        assert result.exit_code == 128 + 15
