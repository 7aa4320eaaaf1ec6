"""The executor's own loop (`Executor.serve`) on a thread of the test's process, its
action runner replaced by the test's: for tests of how the loop reports, stops and hands
back leases, against the real BuildGrid or a Bots stand-in."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker_runtime.executor import bots
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.remote.channels import parse_endpoint

#: What stands in for `ActionRunner.run`: (runner, action, instance, cancel event).
Run = Callable[[object, re_pb2.Action, str, threading.Event], bots.ActionOutcome]


@dataclass
class InProcessExecutor:
    executor: bots.Executor
    loop: threading.Thread
    exit_codes: list[int]

    def stop_and_wait(self, timeout_s: float = 60) -> int | None:
        """SIGTERM's effect: its exit code once its loop ends, None if it runs on."""
        self.executor.stop()
        self.loop.join(timeout_s)
        return None if self.loop.is_alive() else self.exit_codes[0]


def oneshot_outcome(exit_code: int = 0, stdout: bytes = b"") -> bots.ActionOutcome:
    """What a one-shot action that ended with ``exit_code`` and ``stdout`` reports."""
    result = re_pb2.ActionResult(exit_code=exit_code, stdout_raw=stdout)
    return bots.ActionOutcome(result=result, mode="oneshot", reused=False, worker_pid=0)


def runs_until(
    started: threading.Event, until: threading.Event | None, exit_code: int, stdout: bytes
) -> Run:
    """A runner whose action sets ``started``, then ends once ``until`` is set (None: once
    its lease is cancelled, as a stop past the grace does) with a one-shot action's
    outcome of ``exit_code`` and ``stdout``."""

    def run(
        runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
    ) -> bots.ActionOutcome:
        started.set()
        assert (until or cancelled).wait(120), "the action was never let finish"
        return oneshot_outcome(exit_code, stdout)

    return run


@contextlib.contextmanager
def in_process_executor(
    monkeypatch: pytest.MonkeyPatch,
    run: Run,
    server: str,
    workdir: Path,
    shutdown_grace_s: float = bots.DEFAULT_SHUTDOWN_GRACE_S,
    capacity: int = 1,
) -> Iterator[InProcessExecutor]:
    """An executor of ``capacity`` on instance main of ``server``, serving until the block
    ends (then stopped, however it ends, and its channel closed)."""
    monkeypatch.setattr(bots.ActionRunner, "run", run)
    executor = bots.Executor(
        bots.ExecutorSettings(
            server=parse_endpoint(server), instance="main",
            bot_id=f"in-process-{uuid.uuid4().hex}", capacity=capacity, workdir=workdir,
            max_workers=1, memory_limit_mb=None, worker_idle_s=60,
            shutdown_grace_s=shutdown_grace_s,
        )
    )  # fmt: skip
    exit_codes: list[int] = []
    loop = threading.Thread(target=lambda: exit_codes.append(executor.serve()), daemon=True)
    loop.start()
    try:
        yield InProcessExecutor(executor, loop, exit_codes)
    finally:
        executor.stop()
        loop.join(30)
        executor.channel.close()
