"""A remote request's timeout counts from its arrival: one that waited for a remote
thread (all busy with other remote requests) past its timeout is answered as timed out,
not sent with its whole timeout again; one whose remote run outlasts what was left of it
times out too. Run through the real RemoteExecutor and forward,
the remote thread pool shrunk to one thread held by a stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker_runtime.backends.manager import BackendManager
from worker_runtime.config import RemoteConfig, RuntimeConfig
from worker_runtime.envelope import Envelope, write_envelope
from worker_runtime.execution import remote as execution_remote
from worker_runtime.execution.outcome import Failure, FailureKind, WorkRequest
from worker_runtime.execution.remote import RemoteExecutor
from worker_runtime.execution.routing import executor_for
from worker_runtime.remote import forward
from worker_runtime.remote.client import RemoteError


@contextlib.contextmanager
def one_remote_thread_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The remote thread pool shrunk to one thread, held by a stand-in for another
    remote request until the yielded event is set (at the end, if not before)."""
    pool = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(forward, "REMOTE_THREADS", pool)
    busy, release = threading.Event(), threading.Event()

    def another_remote_request() -> None:
        busy.set()
        release.wait(60)

    pool.submit(another_remote_request)
    try:
        assert busy.wait(10)
        yield release
    finally:
        release.set()
        pool.shutdown(wait=True)


def test_a_request_queued_past_its_timeout_times_out_unsent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = RuntimeConfig(
        command=("tool",), routing="remote", remote=RemoteConfig(endpoint="grpc://127.0.0.1:1")
    )
    executor = RemoteExecutor(BackendManager(config, str(tmp_path), tmp_path / "logs"))

    async def scenario(release: threading.Event) -> object:
        # The envelope does not exist: sent, the request would fail as a bad request.
        request = WorkRequest(("tool",), envelope=str(tmp_path / "e.json"), timeout_s=1)
        queued = asyncio.ensure_future(executor.run(request))
        await asyncio.sleep(1.3)  # past its timeout, still waiting for the thread
        assert not queued.done()
        release.set()
        return await queued

    with one_remote_thread_held(monkeypatch) as release:
        outcome = asyncio.run(scenario(release))
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.TIMED_OUT, outcome
    assert "passed while it waited for one of the 64 remote threads" in outcome.message
    assert outcome.timed_out_after_s == 1


def test_a_remote_run_that_outlasts_what_was_left_of_its_timeout_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent with part of its timeout left, the Execute call runs out (DEADLINE_EXCEEDED,
    a RemoteError from the client): that is the request's timeout, not a remote fault
    that `fallback_local` would run again locally with a whole new timeout."""
    config = RuntimeConfig(
        command=("tool",), routing="remote", remote=RemoteConfig(endpoint="grpc://127.0.0.1:1")
    )
    executor = RemoteExecutor(BackendManager(config, str(tmp_path), tmp_path / "logs"))

    def runs_out(*args: object) -> object:
        deadline = args[-1]
        assert isinstance(deadline, float)
        while time.monotonic() < deadline:
            time.sleep(0.05)
        raise RemoteError("Execute failed: DEADLINE_EXCEEDED: Deadline Exceeded")

    monkeypatch.setattr(execution_remote, "forward", runs_out)
    request = WorkRequest(("tool",), envelope=str(tmp_path / "e.json"), timeout_s=1)
    outcome = asyncio.run(executor.run(request))
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.TIMED_OUT, outcome
    assert "ran past its timeout of 1 s" in outcome.message and outcome.timed_out_after_s == 1

    def fails_early(*args: object) -> object:
        raise RemoteError("Execute failed: UNAVAILABLE: connection refused")

    monkeypatch.setattr(execution_remote, "forward", fails_early)
    outcome = asyncio.run(executor.run(request))
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.REMOTE_FAILED, outcome


@pytest.mark.parametrize("fallback_local", [False, True])
def test_a_remote_request_is_answered_at_its_timeout_whatever_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallback_local: bool
) -> None:
    """As the routing composes it, a remote request waiting for a remote thread (or held
    by a blocking read of its envelope, a cache lookup, an upload) was answered only
    once a thread was free, perhaps hours after its timeout; it is answered at it, and
    its remote run is cancelled when it starts."""
    remote = RemoteConfig(endpoint="grpc://127.0.0.1:1", fallback_local=fallback_local)
    config = RuntimeConfig(command=("tool",), routing="remote", remote=remote)
    executor = executor_for(BackendManager(config, str(tmp_path), tmp_path / "logs"))

    async def scenario() -> object:
        request = WorkRequest(
            ("tool",), envelope=str(tmp_path / "e.json"), timeout_s=1, started=time.monotonic()
        )
        queued = asyncio.ensure_future(executor.run(request))
        await asyncio.sleep(2)  # past its timeout, the thread still held
        assert queued.done(), "answered only once a remote thread is free"
        return queued.result()

    with one_remote_thread_held(monkeypatch):
        outcome = asyncio.run(scenario())
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.TIMED_OUT, outcome
    assert outcome.timed_out_after_s == 1


def test_an_output_path_leaving_the_project_is_a_bad_request_not_a_remote_fault(
    tmp_path: Path,
) -> None:
    """It was REMOTE_FAILED, which `fallback_local` (and a race) ran again locally, where
    nothing checks the envelope's paths."""
    (tmp_path / "a.args").write_text("x\n")
    write_envelope(tmp_path / "e.json", Envelope("a.args", (), ("../outside",)))
    config = RuntimeConfig(
        command=("tool",), routing="remote", remote=RemoteConfig(endpoint="grpc://127.0.0.1:1")
    )
    executor = RemoteExecutor(BackendManager(config, str(tmp_path), tmp_path / "logs"))
    request = WorkRequest(("tool",), envelope=str(tmp_path / "e.json"), timeout_s=30)
    outcome = asyncio.run(executor.run(request))
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.BAD_REQUEST, outcome
    assert "'../outside'" in outcome.message
