"""A manager forgets the pools that hold nothing: a ``key_env`` value that changes from
action to action made a pool (and a key, and a copy of the environment) per value, kept
for the daemon's whole life after the reclaimer had stopped its backend. Against real
backends: a pool with a warm backend, a request in it (its backend still starting), or a
backend still stopping is kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import fake_backend
from worker_runtime.backends.manager import BackendManager
from worker_runtime.backends.process import BackendProcess
from worker_runtime.config import RuntimeConfig


def test_a_pool_whose_request_is_starting_its_backend_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process yet, a request in it: forgotten, its backend would have joined a pool
    nobody tracks (unseen by the reclaimer, the status and the shutdown)."""
    start = BackendProcess.start

    async def slow_start(self: BackendProcess) -> None:
        await start(self)
        await asyncio.sleep(0.3)  # the sweep lands here

    monkeypatch.setattr(BackendProcess, "start", slow_start)
    manager = BackendManager(RuntimeConfig(command=tuple(fake_backend())), str(tmp_path), tmp_path)

    async def scenario() -> tuple[int, bool]:
        pool = manager.pool_for(manager.key_for(()))
        call = asyncio.ensure_future(pool.call(("echo", "x"), (), 0))
        await asyncio.sleep(0.1)
        forgotten = manager.forget_unused_pools()
        await call
        known = any(p is pool for p in manager.pools.values())
        await manager.stop_all()
        return forgotten, known

    forgotten, known = asyncio.run(scenario())
    assert forgotten == 0 and known


def test_pools_that_hold_nothing_are_forgotten_and_the_others_kept(tmp_path: Path) -> None:
    manager = BackendManager(
        RuntimeConfig(command=tuple(fake_backend()), max_instances=1), str(tmp_path), tmp_path
    )

    async def scenario() -> tuple[int, int, list[str], int, int]:
        pools = {}
        for build in ("1", "2", "3"):
            key = manager.key_for((("BUILD_ID", build),))
            pools[build] = manager.pool_for(key)
            await pools[build].call(("echo", build), (), 0)
        # Build 1's backend was reclaimed (stopped and gone); build 2's is still warm;
        # build 3's is busy, with a second request waiting for its one slot.
        [one] = pools["1"].processes
        pools["1"].stop_if_idle(one, "idle")
        stopping_kept = manager.forget_unused_pools()  # build 1's backend still stopping
        await asyncio.gather(*pools["1"]._stopping)
        busy = asyncio.ensure_future(pools["3"].call(("sleep", "0.5"), (), 0))
        waiting = asyncio.ensure_future(pools["3"].call(("echo", "next"), (), 0))
        await asyncio.sleep(0.1)
        forgotten = manager.forget_unused_pools()
        kept = sorted(dict(key.env)["BUILD_ID"] for key in manager.pools)
        await asyncio.gather(busy, waiting)
        [three] = pools["3"].processes
        pools["3"].stop_if_idle(three, "idle")
        await asyncio.gather(*pools["3"]._stopping)
        again = manager.forget_unused_pools()
        keys_left = len(manager._keys)
        await manager.stop_all()
        return stopping_kept, forgotten, kept, again, keys_left

    stopping_kept, forgotten, kept, again, keys_left = asyncio.run(scenario())
    assert stopping_kept == 0
    assert forgotten == 1 and kept == ["2", "3"]
    assert again == 1 and keys_left == 1  # build 2's, whose backend is warm
