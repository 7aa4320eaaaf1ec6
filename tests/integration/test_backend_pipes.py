"""A backend whose pipes break while it lives on, and backends that end while idle: the
pool drops them at once and serves every later request on a fresh process, on either
event loop (uvloop is the runtime's; the executor's loop thread runs asyncio's own)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import uvloop

from tests.conftest import fake_backend
from worker_runtime.backends import process as process_module
from worker_runtime.backends.manager import BackendManager
from worker_runtime.backends.pool import BackendPool
from worker_runtime.backends.process import BackendProcess
from worker_runtime.config import RuntimeConfig
from worker_runtime.errors import BackendStartError
from worker_runtime.protocol.messages import WorkRequest

T = TypeVar("T")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def run_on(loop: str, scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(scenario())


async def until_forgotten(pool: BackendPool, pid: int) -> None:
    for _ in range(500):
        if all(proc.pid != pid for proc in pool.processes):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the pool still holds backend {pid} after 5 s")


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("delay", ["0", "0.3"])
def test_a_backend_that_closes_its_stdin_is_replaced(tmp_path: Path, loop: str, delay: str) -> None:
    """It answers its request (after it closed stdin, at once or a moment later), then
    nothing more is written to it: each later request goes to a fresh backend and is
    answered, none fails or waits for its timeout."""
    manager = BackendManager(RuntimeConfig(command=tuple(fake_backend())), str(tmp_path), tmp_path)

    async def scenario() -> tuple[str, list[str], list[int]]:
        pool = manager.pool_for(manager.key_for(()))
        closer = await pool.call(("close-stdin", delay), (), 0)
        await until_forgotten(pool, int(closer.output))
        answers = [await asyncio.wait_for(pool.call(("pid",), (), 0), 10) for _ in range(3)]
        pids = [proc.pid for proc in pool.processes]
        await manager.stop_all()
        return closer.output, [a.output for a in answers], pids

    closer, answers, pids = run_on(loop, scenario)
    assert closer not in answers
    assert len(set(answers)) == 1 and pids == [int(answers[0])]


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_backend_killed_while_idle_leaves_the_pool(tmp_path: Path, loop: str) -> None:
    """A long-lived daemon keeps no dead backends on its books: the next request starts a
    fresh one, and the pool holds only that."""
    manager = BackendManager(RuntimeConfig(command=tuple(fake_backend())), str(tmp_path), tmp_path)

    async def scenario() -> tuple[int, int, list[int]]:
        pool = manager.pool_for(manager.key_for(()))
        first = int((await pool.call(("pid",), (), 0)).output)
        os.kill(first, signal.SIGKILL)
        await until_forgotten(pool, first)
        second = int((await pool.call(("pid",), (), 0)).output)
        pids = [proc.pid for proc in pool.processes]
        await manager.stop_all()
        return first, second, pids

    first, second, pids = run_on(loop, scenario)
    assert second != first and pids == [second]


def test_a_request_that_cannot_be_encoded_leaves_nothing_in_flight(tmp_path: Path) -> None:
    """It was registered as in flight before it was encoded: a request that could not be
    (a field out of its protobuf range) stayed pending for good, and its backend, busy in
    the pool's eyes, was never stopped or retired. It fails, and the backend serves on."""
    config = RuntimeConfig(command=(*fake_backend(), "--multiplex"), multiplex=True)
    manager = BackendManager(config, str(tmp_path), tmp_path)

    async def scenario() -> tuple[int, str]:
        pool = manager.pool_for(manager.key_for(()))
        await pool.call(("pid",), (), 0)
        (proc,) = pool.processes
        with pytest.raises(ValueError):
            await proc.call(WorkRequest(("echo", "x"), (), 7, verbosity=1 << 31))
        in_flight = proc.in_flight
        answer = await pool.call(("echo", "still here"), (), 0)
        await manager.stop_all()
        return in_flight, answer.output

    assert asyncio.run(scenario()) == (0, "still here")


@pytest.mark.parametrize("protocol", ["proto", "json"])
def test_an_answer_followed_by_a_print_in_the_same_write_is_still_the_answer(
    tmp_path: Path, protocol: str
) -> None:
    """The worker answers and prints to stdout at once: its answer was once dropped with
    the bad bytes (the request failed, and its retry the same way). Now the request has
    its answer, and the backend that babbled is replaced for the next one."""
    command = tuple(fake_backend("--protocol", protocol))
    config = RuntimeConfig(command=command, protocol=protocol)
    manager = BackendManager(config, str(tmp_path), tmp_path)

    async def scenario() -> tuple[str, int, int]:
        pool = manager.pool_for(manager.key_for(()))
        first = await pool.call(("pid",), (), 0)
        answered = await asyncio.wait_for(pool.call(("answer-then-print",), (), 0), 10)
        await until_forgotten(pool, int(first.output))
        after = await asyncio.wait_for(pool.call(("pid",), (), 0), 10)
        await manager.stop_all()
        return answered.output, int(first.output), int(after.output)

    output, babbler, fresh = run_on("uvloop", scenario)
    assert output == "answered"
    assert fresh != babbler


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_backend_that_closed_its_stdout_gets_no_new_request(tmp_path: Path, loop: str) -> None:
    """It answers, closes its stdout and lives on (it is killed a second later). A request
    in that second once went to it, failed as a dead backend's and spent a retry."""
    manager = BackendManager(RuntimeConfig(command=tuple(fake_backend())), str(tmp_path), tmp_path)

    async def scenario() -> tuple[int, str]:
        pool = manager.pool_for(manager.key_for(()))
        closer = await pool.call(("answer-then-close-stdout",), (), 0)
        (proc,) = pool.processes
        for _ in range(500):  # until the loop has seen its stdout close
            if proc._stdout_closed:
                break
            await asyncio.sleep(0.01)
        assert proc._stdout_closed and proc.pid == int(closer.output)
        after = await asyncio.wait_for(pool.call(("pid",), (), 0), 10)
        await manager.stop_all()
        return int(closer.output), after.output

    closer, after = run_on(loop, scenario)
    assert after.isdigit() and int(after) != closer


def alive_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


def test_a_backend_that_cannot_be_watched_is_not_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pidfd_open refused (ENOSYS before Linux 5.3, EPERM under an old seccomp filter):
    the process it was for was already running, and was left so, untracked, once per
    request, while the request failed as a bug of the runtime."""
    manager = BackendManager(RuntimeConfig(command=tuple(fake_backend())), str(tmp_path), tmp_path)

    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    before = {child.pid for child in alive_children()}
    monkeypatch.setattr(os, "pidfd_open", refused)

    async def scenario() -> None:
        pool = manager.pool_for(manager.key_for(()))
        try:
            with pytest.raises(BackendStartError, match=r"pidfd_open failed.*Linux 5\.3"):
                await pool.call(("echo", "x"), (), 0)
        finally:
            await manager.stop_all()

    run_on("uvloop", scenario)
    assert [c.pid for c in alive_children() if c.pid not in before] == []


def test_stopping_a_backend_that_never_exits_gives_up_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend stuck in the kernel (a hung NFS mount) outlives SIGKILL: its stop waited
    for its exit forever, and with it the daemon's shutdown. Stood in for here by a
    stopped process whose SIGKILL never comes."""
    monkeypatch.setattr(process_module, "STUCK_AFTER_SIGKILL_S", 0.5)
    monkeypatch.setattr(BackendProcess, "_kill_group", lambda self: None)
    manager = BackendManager(RuntimeConfig(command=tuple(fake_backend())), str(tmp_path), tmp_path)
    stuck: list[int] = []

    async def scenario() -> None:
        pool = manager.pool_for(manager.key_for(()))
        stuck.append(int((await pool.call(("pid",), (), 0)).output))
        os.kill(stuck[0], signal.SIGSTOP)
        # Stopped before the SIGTERM of the stop comes: one that finds it still running
        # (the SIGSTOP not acted on yet, on a busy machine) kills it, as its default does.
        deadline = time.monotonic() + 10
        while psutil.Process(stuck[0]).status() != psutil.STATUS_STOPPED:
            assert time.monotonic() < deadline, "the backend never stopped"
            await asyncio.sleep(0.01)
        [backend] = pool.processes
        await asyncio.wait_for(backend.stop(grace_s=0.2), 10)
        assert psutil.Process(stuck[0]).status() == psutil.STATUS_STOPPED, "not the case tested"

    try:
        run_on("uvloop", scenario)
    finally:
        for pid in stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_backend_that_starts_as_its_pool_stops_is_stopped_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's stop took its processes while one was still starting: that one was
    added afterwards, and nothing stopped it until the daemon itself exited."""
    start = BackendProcess.start

    async def slow_start(self: BackendProcess) -> None:
        await start(self)
        await asyncio.sleep(0.4)  # the pool's stop lands here

    monkeypatch.setattr(BackendProcess, "start", slow_start)
    command = tuple(fake_backend())
    manager = BackendManager(RuntimeConfig(command=command), str(tmp_path), tmp_path)

    async def scenario() -> tuple[str, list[psutil.Process]]:
        pool = manager.pool_for(manager.key_for(()))
        call = asyncio.ensure_future(pool.call(("pid",), (), 0))
        await asyncio.sleep(0.2)
        await pool.stop()
        try:
            await call
        except BackendStartError as exc:
            error = str(exc)
        else:
            error = "answered"
        workers = []
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE and "fake_worker" in str(child.cmdline()):
                    workers.append(child)
        return error, workers

    error, workers = run_on("uvloop", scenario)
    for worker in workers:
        worker.kill()
    assert "stopping" in error
    assert workers == []


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_the_stdout_of_a_dead_backend_is_closed_though_its_helper_holds_it(
    tmp_path: Path, loop: str
) -> None:
    """A backend that started a helper in a session of its own (out of reach of the
    group kill) and then died: the helper held the write end of its stdout, so the pipe
    never ended, and the runtime kept its read end (and the dead process's buffers) for
    good, one descriptor per such death."""
    command = tuple(fake_backend("--spawn-session-helper"))
    manager = BackendManager(RuntimeConfig(command=command), str(tmp_path), tmp_path)
    helpers: list[int] = []

    def holds(pipe: str) -> bool:
        fds = Path("/proc/self/fd")
        return any(os.readlink(fd) == pipe for fd in fds.iterdir() if fd.is_symlink())

    async def scenario() -> tuple[bool, bool]:
        pool = manager.pool_for(manager.key_for(()))
        helpers.append(int((await pool.call(("helper-pid",), (), 0)).output))
        [backend] = pool.processes
        pipe = os.readlink(f"/proc/{helpers[0]}/fd/1")
        held_while_alive = holds(pipe)
        os.kill(backend.pid, signal.SIGKILL)
        await backend._exited.wait()
        for _ in range(100):  # closed 1 s after the exit: up to 10 s on a loaded machine
            await asyncio.sleep(0.1)
            if not holds(pipe):
                break
        return held_while_alive, holds(pipe)

    try:
        held_while_alive, held_after = run_on(loop, scenario)
    finally:
        for pid in helpers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert held_while_alive, "not the case tested"
    assert not held_after, "the dead backend's stdout is still open in the runtime"


@pytest.mark.parametrize("multiplex", [False, True])
def test_a_cancelled_request_on_a_backend_that_never_exits_is_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, multiplex: bool
) -> None:
    """A request cancelled (its timeout, Buck2's cancel, a lost race) on a backend stuck
    in the kernel: the cancel waited for the process's exit forever, so the timeout was
    never answered, the request's slot never freed, and the daemon's drain hung on it.
    Stood in for by a stopped process whose SIGKILL never comes; a cancellable multiplex
    one does not answer its cancel either."""
    monkeypatch.setattr(process_module, "STUCK_AFTER_SIGKILL_S", 0.5)
    monkeypatch.setattr(BackendProcess, "_kill_group", lambda self: None)
    config = RuntimeConfig(
        command=tuple(fake_backend(*(["--multiplex"] if multiplex else []))),
        multiplex=multiplex,
        cancellable=multiplex,
        cancel_grace_s=0.2,
    )
    manager = BackendManager(config, str(tmp_path), tmp_path)
    stuck: list[int] = []

    async def scenario() -> bool:
        pool = manager.pool_for(manager.key_for(()))
        stuck.append(int((await pool.call(("pid",), (), 0)).output))
        call = asyncio.ensure_future(pool.call(("sleep", "30"), (), 0))
        await asyncio.sleep(0.2)
        os.kill(stuck[0], signal.SIGSTOP)
        timed_out = asyncio.ensure_future(asyncio.wait_for(call, 0.1))
        try:
            done, _ = await asyncio.wait([timed_out], timeout=10)
        finally:
            os.kill(stuck[0], signal.SIGKILL)  # frees the old code's wait, so the test ends
            with contextlib.suppress(TimeoutError, process_module.BackendError):
                await timed_out
        return bool(done)

    try:
        assert run_on("uvloop", scenario), "the cancelled request waited for the stuck backend"
    finally:
        for pid in stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_newline_written_after_an_answer_keeps_the_warm_backend(
    tmp_path: Path, loop: str
) -> None:
    """A JSON worker writes its answer, then the newline after it in a write of its own
    (`print` unbuffered does). When the next request came before the loop had read that
    newline, the warm backend was killed as babbling and the request waited for a cold
    one; the newline is read and taken as the space between answers now."""
    command = tuple(fake_backend("--protocol", "json"))
    manager = BackendManager(
        RuntimeConfig(command=command, protocol="json"), str(tmp_path), tmp_path
    )

    async def scenario() -> tuple[str, int, int]:
        pool = manager.pool_for(manager.key_for(()))
        first = await pool.call(("answer-then-newline", "0.1"), (), 0)
        (proc,) = pool.processes
        for _ in range(1000):  # the loop kept busy: the newline waits in the pipe
            if proc.unread_output_bytes():
                break
            time.sleep(0.01)  # noqa: ASYNC251
        assert proc.unread_output_bytes() == 1
        after = await pool.call(("pid",), (), 0)
        await manager.stop_all()
        return first.output, proc.pid, int(after.output)

    output, warm, served = run_on(loop, scenario)
    assert output == "answered" and served == warm
