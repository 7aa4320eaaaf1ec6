"""The executor's worker pool with real worker processes: keyed by tenant and key, a
worker that fails is discarded, idle ones are reaped, the cap evicts the least recently
used idle worker."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, wait_gone
from worker_runtime.executor.workers import (
    PersistentWorker,
    WorkerFault,
    WorkerIdentity,
    WorkerPool,
)
from worker_runtime.protocol.messages import WorkRequest

WORKER = REPO_ROOT / "tests" / "backends" / "remote_test_worker.py"


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[WorkerPool]:
    created = WorkerPool(tmp_path / "workers", max_workers=2, memory_limit_mb=None, idle_s=3600)
    yield created
    created.stop_all()


def start(pool: WorkerPool, tmp_path: Path, instance: str, key: str = "k") -> PersistentWorker:
    tool = tmp_path / "worker.py"
    shutil.copy(WORKER, tool)
    identity = WorkerIdentity(instance, key, "json")
    return pool.acquire(
        identity, [sys.executable, "worker.py"], dict(os.environ), [("worker.py", tool)]
    )


def served_pid(worker: PersistentWorker, sandbox: Path) -> str:
    (sandbox / "in.txt").write_text("x\n")
    response = worker.call(
        WorkRequest(arguments=("--out", "o.txt", "in.txt"), sandbox_dir=str(sandbox)), timeout_s=30
    )
    assert response.exit_code == 0, response.output
    return (sandbox / "o.txt").read_text().split("pid=")[1].strip()


def test_tenants_never_share_and_a_tenant_reuses_its_own(pool: WorkerPool, tmp_path: Path) -> None:
    first = start(pool, tmp_path, "main")
    assert served_pid(first, tmp_path) == str(first.pid)
    pool.release(first, healthy=True)
    other = start(pool, tmp_path, "tenant-b")
    assert other.pid != first.pid  # same key, other tenant: another process
    pool.release(other, healthy=True)
    again = start(pool, tmp_path, "main")
    assert again.pid == first.pid and pool.reuses == 1
    pool.release(again, healthy=True)


def test_a_worker_that_dies_is_discarded(pool: WorkerPool, tmp_path: Path) -> None:
    worker = start(pool, tmp_path, "main")
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(WorkerFault, match=r"exited|Broken pipe"):
        served_pid(worker, tmp_path)
    pool.release(worker, healthy=False)
    fresh = start(pool, tmp_path, "main")
    assert fresh.pid != worker.pid and served_pid(fresh, tmp_path) == str(fresh.pid)
    pool.release(fresh, healthy=True)


def test_the_cap_evicts_the_least_recently_used_idle_worker(
    pool: WorkerPool, tmp_path: Path
) -> None:
    a = start(pool, tmp_path, "main", "a")
    pool.release(a, healthy=True)
    b = start(pool, tmp_path, "main", "b")
    pool.release(b, healthy=True)
    c = start(pool, tmp_path, "main", "c")  # cap 2: a goes
    assert wait_gone([a.pid]) == [] and pool.evictions == 1
    assert sorted(pool.pids()) == sorted([b.pid, c.pid])
    pool.release(c, healthy=True)


def test_idle_workers_are_reaped(tmp_path: Path) -> None:
    pool = WorkerPool(tmp_path / "workers", max_workers=2, memory_limit_mb=None, idle_s=0.0)
    try:
        worker = start(pool, tmp_path, "main")
        pool.release(worker, healthy=True)
        pool.reap_idle()
        assert wait_gone([worker.pid]) == [] and pool.pids() == []
    finally:
        pool.stop_all()


def test_idle_workers_go_when_all_workers_pass_the_memory_limit(tmp_path: Path) -> None:
    pool = WorkerPool(tmp_path / "workers", max_workers=4, memory_limit_mb=1, idle_s=3600)
    try:
        first = start(pool, tmp_path, "main", "a")
        second = start(pool, tmp_path, "main", "b")
        pool.release(first, healthy=True)  # idle; both together are far over 1 MB
        assert wait_gone([first.pid]) == [] and pool.evictions == 1
        assert pool.pids() == [second.pid]  # a busy worker is never stopped for memory
        pool.release(second, healthy=True)
        assert wait_gone([second.pid]) == []
    finally:
        pool.stop_all()
