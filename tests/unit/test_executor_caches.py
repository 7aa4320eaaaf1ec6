"""The executor's per-instance CAS clients and local blob copies are made once per
instance, however many lease threads ask for them at once: two copies of one instance
would race on the same files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from worker_runtime.executor import bots
from worker_runtime.executor.blob_cache import BlobCache
from worker_runtime.executor.bots import Executor, ExecutorSettings
from worker_runtime.remote.cas import Cas
from worker_runtime.remote.channels import parse_endpoint


def test_lease_threads_asking_at_once_share_one_cache_per_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    original = BlobCache.for_instance

    def slow_for_instance(cas: Cas, workdir: Path) -> BlobCache:
        made.append(cas.instance)
        time.sleep(0.2)  # every thread arrives while the first is still making it
        return original(cas, workdir)

    monkeypatch.setattr(bots.BlobCache, "for_instance", staticmethod(slow_for_instance))
    settings = ExecutorSettings(
        server=parse_endpoint("unix:///nowhere"), instance="main", bot_id="caches",
        capacity=4, workdir=tmp_path, max_workers=1, memory_limit_mb=None, worker_idle_s=60.0,
    )  # fmt: skip
    executor = Executor(settings)
    start = threading.Barrier(4)
    found: list[BlobCache] = []

    def ask() -> None:
        start.wait()
        found.append(executor._blobs("main"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert made == ["main"]
    assert len(found) == 4 and all(cache is found[0] for cache in found)
    assert found[0].cas is executor._cas("main")
    executor.pool.stop_all()
    executor.channel.close()
