"""A remote request's timeout counts from its arrival: one that waited for a remote
thread (all busy with other remote requests) past its timeout is answered as timed out,
not sent with its whole timeout again. Run through the real RemoteExecutor and forward,
the remote thread pool shrunk to one thread held by a stand-in."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker_runtime.backends.manager import BackendManager
from worker_runtime.config import RemoteConfig, RuntimeConfig
from worker_runtime.execution.outcome import Failure, FailureKind, WorkRequest
from worker_runtime.execution.remote import RemoteExecutor
from worker_runtime.remote import forward


def test_a_request_queued_past_its_timeout_times_out_unsent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(forward, "REMOTE_THREADS", pool)
    config = RuntimeConfig(
        command=("tool",), routing="remote", remote=RemoteConfig(endpoint="grpc://127.0.0.1:1")
    )
    executor = RemoteExecutor(BackendManager(config, str(tmp_path), tmp_path / "logs"))
    busy = threading.Event()
    release = threading.Event()

    def another_remote_request() -> None:
        busy.set()
        release.wait(60)

    async def scenario() -> object:
        pool.submit(another_remote_request)
        busy.wait(10)
        # The envelope does not exist: sent, the request would fail as a bad request.
        request = WorkRequest(("tool",), envelope=str(tmp_path / "e.json"), timeout_s=1)
        queued = asyncio.ensure_future(executor.run(request))
        await asyncio.sleep(1.3)  # past its timeout, still waiting for the thread
        assert not queued.done()
        release.set()
        return await queued

    try:
        outcome = asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.TIMED_OUT, outcome
    assert "passed while it waited for one of the 64 remote threads" in outcome.message
    assert outcome.timed_out_after_s == 1
