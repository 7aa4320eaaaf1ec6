"""Shutdown as Buck2 does it (SIGTERM to the worker process, SIGKILL after its grace),
and no orphans, ever, for the in-process runtime (``--no-daemon``). The daemon's
lifecycle is in test_daemon.py."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

from tests.conftest import (
    StartRuntime,
    every_server,
    fake_backend,
    processes_with_marker,
    wait_gone,
    wait_started,
)
from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE
from workers_dev.emulator import StreamingSession, make_command

#: Every test that starts the runtime runs once on each server.
server = every_server


def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    worker = start_runtime(fake_backend(), ["--no-daemon"])
    backend_pid = int(worker.run("pid").stderr)
    results: list[object] = []
    started = tmp_path / "started"
    thread = threading.Thread(target=lambda: results.append(worker.run("sleep", "1", str(started))))
    thread.start()
    wait_started(started)
    assert worker.proc is not None
    assert worker.terminate() == 0  # not SIGKILLed after Buck2's grace: it exited itself
    thread.join(10)
    response = results[0]
    assert getattr(response, "stderr", None) == "slept", response
    assert not os.path.exists(worker.socket_path)
    assert wait_gone([backend_pid]) == []


def test_sigterm_cancels_requests_that_run_past_the_grace(
    start_runtime: StartRuntime, tmp_path
) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"shutdown_grace_s": 1}')
    worker = start_runtime(fake_backend(), ["--no-daemon", "--config", str(config)])
    backend_pid = int(worker.run("pid").stderr)
    responses: list[object] = []
    started = tmp_path / "started"
    thread = threading.Thread(
        target=lambda: responses.append(worker.run("sleep", "60", str(started)))
    )
    thread.start()
    wait_started(started)
    # Exits by itself (not SIGKILLed after Buck2's 10 s), its sleep cancelled at 1 s.
    assert worker.terminate() == 0
    thread.join(10)
    (response,) = responses  # answered, not dropped
    assert getattr(response, "exit_code", None) == RUNTIME_ERROR_EXIT_CODE
    assert "shutting down and the request did not finish within 1 s" in getattr(
        response, "stderr", ""
    )
    assert wait_gone([backend_pid]) == []


def test_requests_after_sigterm_are_refused_clearly(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """The in-process runtime drains after SIGTERM: what runs finishes and is answered,
    what comes later is refused with the reason. (Through the daemon the front exits at
    once, and Buck2, like the emulator, fails both as a worker exit: test_daemon.py.)"""
    worker = start_runtime(fake_backend("--multiplex"), ["--no-daemon", "--multiplex"])

    async def scenario() -> str:
        async with StreamingSession(worker.target, worker.proc) as session:
            started = tmp_path / "started"
            slow = asyncio.create_task(session.execute(make_command(["sleep", "1", str(started)])))
            await asyncio.to_thread(wait_started, started)
            assert worker.proc is not None
            os.kill(worker.proc.pid, signal.SIGTERM)  # as Buck2 ends a command
            await asyncio.sleep(0.2)
            late = await session.execute(make_command(["echo", "late"]))
            assert late.exit_code == RUNTIME_ERROR_EXIT_CODE
            assert "shutting down" in late.stderr
            return (await slow).stderr

    assert asyncio.run(scenario()) == "slept"


def test_runtime_killed_with_sigkill_takes_its_backends_along(start_runtime: StartRuntime) -> None:
    worker = start_runtime(
        fake_backend(), ["--no-daemon"], env={"TEST_PROCESS_MARKER": "sigkill-test"}
    )
    pids = {int(worker.run("pid").stderr)}
    assert worker.proc is not None
    os.kill(worker.proc.pid, signal.SIGKILL)  # not the group: only the runtime dies
    worker.proc.wait()
    assert wait_gone(sorted(pids)) == []


def test_backends_survive_the_group_sigterm_until_drained(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """Backends run in their own session: a SIGTERM to the runtime's process group (Buck2
    signals the group when no grace is set; a terminal's Ctrl-C does too) does not reach
    them mid-request, and the runtime answers the request before it stops them itself."""
    worker = start_runtime(fake_backend(), ["--no-daemon"])
    backend_pid = int(worker.run("pid").stderr)
    assert worker.proc is not None
    results: list[object] = []
    started = tmp_path / "started"
    thread = threading.Thread(target=lambda: results.append(worker.run("sleep", "1", str(started))))
    thread.start()
    wait_started(started)
    os.killpg(worker.proc.pid, signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    thread.join(10)
    assert [getattr(r, "stderr", r) for r in results] == ["slept"]
    assert wait_gone([backend_pid]) == []


def test_no_process_left_after_many_backends(start_runtime: StartRuntime, tmp_path) -> None:
    worker = start_runtime(
        fake_backend(), ["--no-daemon", "--max-instances", "4"], env={"TEST_PROCESS_MARKER": "many"}
    )
    threads = [threading.Thread(target=worker.run, args=("sleep", "0.5")) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(processes_with_marker("many")) >= 5  # runtime + 4 backends
    worker.terminate()
    assert processes_with_marker("many") == []
