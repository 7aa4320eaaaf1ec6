"""The executor's worker pool with real worker processes: keyed by tenant and key, a
worker that fails is discarded, idle ones are reaped, the cap evicts the least recently
used idle worker; a multiplex worker serves concurrent requests in one process, survives
a cancel it answers, and fails every request in flight when it dies."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import FAKE_WORKER, REPO_ROOT, wait_gone, wait_started
from tests.worker_identity import host_pid, reported
from worker_runtime.backends import process as backend_process
from worker_runtime.backends.key import WorkerKey
from worker_runtime.backends.loop_thread import LoopThread
from worker_runtime.executor import workers
from worker_runtime.executor.limits import Confinement, Group, Limits
from worker_runtime.executor.workers import (
    AcquireCancelled,
    PersistentWorker,
    WorkerCancelled,
    WorkerFault,
    WorkerPool,
)
from worker_runtime.protocol.messages import MAX_REQUEST_ID, WorkRequest

WORKER = REPO_ROOT / "tests" / "backends" / "remote_test_worker.py"


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[WorkerPool]:
    created = WorkerPool(tmp_path / "workers", max_workers=2, memory_limit_mb=None, idle_s=3600)
    yield created
    created.stop_all()


def start(
    pool: WorkerPool, tmp_path: Path, instance: str, key: str = "k", multiplex: bool = False
) -> PersistentWorker:
    tool = tmp_path / "worker.py"
    shutil.copy(WORKER, tool)
    argv = (sys.executable, "worker.py", *(["--multiplex"] if multiplex else []))
    # ``key`` stands for the tool's digest: another key, another worker.
    identity = WorkerKey(argv, (), "json", multiplex, (("worker.py", key),), instance)
    return pool.acquire(identity, dict(os.environ), [("worker.py", tool)])[0]


def served_pid(worker: PersistentWorker, sandbox: Path) -> str:
    """The host pid of the worker process that served a request, as text."""
    (sandbox / "in.txt").write_text("x\n")
    response = worker.call(
        WorkRequest(arguments=("--out", "o.txt", "in.txt"), sandbox_dir=str(sandbox)), timeout_s=30
    )
    assert response.exit_code == 0, response.output
    return str(host_pid(reported((sandbox / "o.txt").read_text())))


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
    with pytest.raises(WorkerFault, match=r"was killed by signal SIGKILL before answering"):
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


def test_a_wait_for_a_worker_at_the_cap_ends_when_its_lease_is_cancelled(
    tmp_path: Path,
) -> None:
    """Every worker busy at the cap: a request of another key waits, and a cancel of its
    lease ends the wait (it used to wait on until a worker became idle)."""
    pool = WorkerPool(tmp_path / "workers", max_workers=1, memory_limit_mb=None, idle_s=3600)
    try:
        busy = start(pool, tmp_path, "main", "a")  # never released during the wait
        tool = tmp_path / "worker.py"
        identity = WorkerKey((sys.executable, "worker.py"), (), "json", False,
                             (("worker.py", "b"),), "main")  # fmt: skip
        cancelled = threading.Event()
        with ThreadPoolExecutor(1) as threads:
            waiting = threads.submit(
                pool.acquire, identity, dict(os.environ), [("worker.py", tool)],
                cancelled=cancelled,
            )  # fmt: skip
            with pytest.raises(TimeoutError):
                waiting.result(timeout=0.5)  # at the cap: it waits
            cancelled.set()
            with pytest.raises(AcquireCancelled, match="cancelled while it waited"):
                waiting.result(timeout=30)
        assert pool.pids() == [busy.pid] and pool.starts == 1  # nothing started, nothing lost
        pool.release(busy, healthy=True)
    finally:
        pool.stop_all()


def test_part_of_a_stray_answer_read_already_discards_the_worker_before_reuse(
    pool: WorkerPool,
) -> None:
    """The second answer came in part, and the pipe loop had read that part already: only
    the pipe was looked at, and the next action got the stray bytes glued to its own
    answer. The check is made on the pipe loop now, where the framing is."""
    identity = WorkerKey((sys.executable, str(FAKE_WORKER), "--protocol", "json"), (), "json",
                         False, (), "main")  # fmt: skip
    babbler, _ = pool.acquire(identity, dict(os.environ), [])
    first = babbler.call(WorkRequest(arguments=("answer-then-part", "0.05")), timeout_s=30)
    assert first.output == "first answer"
    pool.release(babbler, healthy=True)
    deadline = time.monotonic() + 30
    while not babbler.backend.framing.mid_message() and time.monotonic() < deadline:
        time.sleep(0.01)  # until the pipe loop has read the part
    assert babbler.backend.framing.mid_message()
    assert babbler.backend.unread_output_bytes() == 0  # nothing is left in the pipe
    worker, reused = pool.acquire(identity, dict(os.environ), [])
    second = worker.call(WorkRequest(arguments=("echo", "mine")), timeout_s=30)
    assert second.output == "mine"
    assert not reused and worker.pid != babbler.pid
    assert wait_gone([babbler.pid]) == []
    pool.release(worker, healthy=True)


def test_a_stray_answer_waiting_in_the_pipe_discards_the_worker_before_reuse(
    pool: WorkerPool, caplog: pytest.LogCaptureFixture
) -> None:
    """A singleplex worker answers an action twice; the second answer is still in its
    pipe (the pipe loop was busy) when the next action of its key comes: that worker is
    discarded and the action runs on a fresh one, instead of taking the stray answer for
    its own."""
    identity = WorkerKey((sys.executable, str(FAKE_WORKER), "--protocol", "json"), (), "json",
                         False, (), "main")  # fmt: skip
    babbler, _ = pool.acquire(identity, dict(os.environ), [])
    first = babbler.call(WorkRequest(arguments=("answer-twice", "0.3")), timeout_s=30)
    assert first.output == "first answer"
    pool.release(babbler, healthy=True)

    async def hold_the_loop() -> None:
        time.sleep(1.0)  # noqa: ASYNC251 - a busy loop is the point: nothing is read

    holder = threading.Thread(target=LoopThread.shared().run, args=(hold_the_loop(),))
    holder.start()
    time.sleep(0.6)  # the second answer is in the pipe now, unread
    worker, reused = pool.acquire(identity, dict(os.environ), [])
    second = worker.call(WorkRequest(arguments=("echo", "mine")), timeout_s=30)
    holder.join()
    assert second.output == "mine"  # not "second answer"
    assert not reused and worker.pid != babbler.pid
    assert wait_gone([babbler.pid]) == []
    assert f"pid {babbler.pid}" in caplog.text or f"worker {babbler.pid} " in caplog.text
    assert caplog.text.count("wrote while it had no request") == 1  # logged once
    pool.release(worker, healthy=True)


def test_a_worker_still_starting_when_the_pool_stops_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executor stops its pool on the way out while a lease thread is still starting
    a worker: that worker is stopped as soon as it is up, instead of being kept (and
    outliving the executor)."""
    pool = WorkerPool(tmp_path / "workers", max_workers=2, memory_limit_mb=None, idle_s=3600)
    entered, proceed = threading.Event(), threading.Event()
    started: list[PersistentWorker] = []
    original = WorkerPool._start

    def held_start(self: WorkerPool, *args: object, **kwargs: object) -> PersistentWorker:
        entered.set()
        proceed.wait(timeout=30)
        worker = original(self, *args, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        return worker

    monkeypatch.setattr(WorkerPool, "_start", held_start)
    with ThreadPoolExecutor(1) as threads:
        starting = threads.submit(start, pool, tmp_path, "main")
        assert entered.wait(timeout=30)
        pool.stop_all()
        proceed.set()
        with pytest.raises(AcquireCancelled, match="the executor is stopping"):
            starting.result(timeout=60)
    (worker,) = started
    assert wait_gone([worker.pid]) == [] and pool.pids() == []
    with pytest.raises(AcquireCancelled, match="no worker is started"):
        start(pool, tmp_path, "main")  # nothing new once stopped
    assert len(started) == 1


def test_an_answer_past_the_output_budget_is_refused_as_it_is_read(tmp_path: Path) -> None:
    """The executor's workers answer within the action's output budget: a longer answer
    is a protocol error once its length is known (it is never read whole), the worker is
    discarded, and the next request gets a fresh one."""
    pool = WorkerPool(
        tmp_path / "workers", max_workers=2, memory_limit_mb=None, idle_s=3600,
        max_response_bytes=64 << 10,
    )  # fmt: skip
    identity = WorkerKey((sys.executable, str(FAKE_WORKER), "--protocol", "proto"), (),
                         "proto", False, (), "main")  # fmt: skip
    try:
        worker, _ = pool.acquire(identity, dict(os.environ), [])
        with pytest.raises(WorkerFault, match="more than the 65536 taken here"):
            worker.call(WorkRequest(arguments=("huge", str(1 << 20))), timeout_s=30)
        pool.release(worker, healthy=False)
        fresh, reused = pool.acquire(identity, dict(os.environ), [])
        answer = fresh.call(WorkRequest(arguments=("huge", str(60 << 10))), timeout_s=30)
        assert not reused and len(answer.output) == 60 << 10  # within the budget: served
        pool.release(fresh, healthy=True)
        assert wait_gone([worker.pid]) == []
    finally:
        pool.stop_all()


def test_idle_workers_are_reaped(tmp_path: Path) -> None:
    pool = WorkerPool(tmp_path / "workers", max_workers=2, memory_limit_mb=None, idle_s=0.0)
    try:
        worker = start(pool, tmp_path, "main")
        pool.release(worker, healthy=True)
        pool.reap_idle()
        assert wait_gone([worker.pid]) == [] and pool.pids() == []
    finally:
        pool.stop_all()


def test_a_reaped_workers_stop_is_left_to_a_thread_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reap_idle runs on the executor's heartbeat (the UpdateBotSession loop), and it
    stopped the idle workers there, under the pool's lock: a stop that took long (a
    worker's home of many files to remove) held the heartbeat back, past the server's
    keepalive, and every lease was lost. Here a stop waits for the test: reap_idle has
    returned, the worker still running, before the test lets it go on."""
    pool = WorkerPool(tmp_path / "workers", max_workers=2, memory_limit_mb=None, idle_s=0.0)
    stopping, go_on = threading.Event(), threading.Event()
    stop = PersistentWorker.stop

    def held_stop(worker: PersistentWorker) -> None:
        stopping.set()
        go_on.wait(30)
        stop(worker)

    monkeypatch.setattr(PersistentWorker, "stop", held_stop)
    try:
        worker = start(pool, tmp_path, "main")
        pool.release(worker, healthy=True)
        pool.reap_idle()
        assert stopping.wait(10) and pool.pids() == []
        os.kill(worker.pid, 0)  # still there: its stop goes on without the heartbeat
    finally:
        go_on.set()
        pool.stop_all()  # and waits for the reaper
    assert wait_gone([worker.pid]) == []


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


def request(*arguments: str, sandbox: Path) -> WorkRequest:
    sandbox.mkdir(parents=True, exist_ok=True)
    (sandbox / "in.txt").write_text("x\n")
    return WorkRequest(arguments=arguments, sandbox_dir=str(sandbox))


def test_a_multiplex_worker_serves_concurrent_requests_in_one_process(
    pool: WorkerPool, tmp_path: Path
) -> None:
    a = start(pool, tmp_path, "main", multiplex=True)
    b = start(pool, tmp_path, "main", multiplex=True)  # busy, but multiplex: the same one
    assert a is b and a.in_flight == 2 and pool.starts == 1
    # The first request waits for the second one's output: only concurrency ends it.
    first = request(
        "--wait-if", "remote", str(tmp_path / "b" / "o.txt"), "--out", "o.txt", "in.txt",
        sandbox=tmp_path / "a",
    )  # fmt: skip
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(a.call(first, 30).exit_code))
    thread.start()
    second = b.call(request("--out", "o.txt", "in.txt", sandbox=tmp_path / "b"), 30)
    thread.join(30)
    assert second.exit_code == 0 and results == [0]
    pids = {str(host_pid(reported((tmp_path / s / "o.txt").read_text()))) for s in "ab"}
    assert pids == {str(a.pid)}
    pool.release(a, healthy=True)
    pool.release(b, healthy=True)
    assert a.in_flight == 0 and pool.pids() == [a.pid]


def test_a_cancel_a_multiplex_worker_answers_keeps_it(pool: WorkerPool, tmp_path: Path) -> None:
    worker = start(pool, tmp_path, "main", multiplex=True)
    cancelled = threading.Event()
    slow = request(
        "--sleep-if", "remote", "300", "--out", "o.txt", "in.txt", sandbox=tmp_path / "s"
    )
    threading.Timer(0.3, cancelled.set).start()
    with pytest.raises(WorkerCancelled, match="answered the cancel") as caught:
        worker.call(slow, 60, cancelled)
    assert caught.value.worker_healthy
    assert not (tmp_path / "s" / "o.txt").exists()  # it stopped, as it said
    pool.release(worker, healthy=caught.value.worker_healthy)
    again = start(pool, tmp_path, "main", multiplex=True)
    assert again.pid == worker.pid  # still warm
    assert served_pid(again, tmp_path) == str(worker.pid)
    pool.release(again, healthy=True)


def waiting_in(
    worker: PersistentWorker, tmp_path: Path
) -> tuple[threading.Thread, list[WorkerFault]]:
    """A request that waits in ``worker`` on a thread of its own (started); the list gets
    the fault it ends with."""
    waiting = request("--sleep-if", "remote", "300", "--out", "o.txt", sandbox=tmp_path / "w")
    faults: list[WorkerFault] = []

    def wait() -> None:
        try:
            worker.call(waiting, 60)
        except WorkerFault as exc:
            faults.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, faults


def test_a_multiplex_worker_that_dies_fails_every_request_in_flight(
    pool: WorkerPool, tmp_path: Path
) -> None:
    worker = start(pool, tmp_path, "main", multiplex=True)
    other = start(pool, tmp_path, "main", multiplex=True)
    thread, errors = waiting_in(other, tmp_path)
    with pytest.raises(WorkerFault, match="exited"):
        worker.call(request("--exit", sandbox=tmp_path / "x"), 30)
    thread.join(30)
    assert len(errors) == 1 and "exited" in str(errors[0])
    pool.release(worker, healthy=False)
    pool.release(other, healthy=False)
    assert wait_gone([worker.pid]) == [] and pool.pids() == []
    fresh = start(pool, tmp_path, "main", multiplex=True)
    assert fresh.pid != worker.pid
    pool.release(fresh, healthy=True)


def test_a_multiplex_worker_whose_stdin_closed_still_answers_what_it_owes(
    pool: WorkerPool, tmp_path: Path
) -> None:
    """Its stdin closed, it takes no new request, but the requests it has are not failed
    when one of them is released: they are answered, and it goes after the last."""
    worker = start(pool, tmp_path, "main", multiplex=True)
    other = start(pool, tmp_path, "main", multiplex=True)
    go = tmp_path / "go"
    owed = request(
        "--wait-if", "remote", str(go), "--out", "o.txt", "in.txt", sandbox=tmp_path / "a"
    )
    answers: list[int] = []
    thread = threading.Thread(target=lambda: answers.append(other.call(owed, 30).exit_code))
    thread.start()
    assert wait_for_file(tmp_path / "a" / "started.txt"), "the first request never started"
    closing = request("--close-stdin", "--out", "c.txt", "in.txt", sandbox=tmp_path / "c")
    assert worker.call(closing, 30).exit_code == 0
    pool.release(worker, healthy=True)  # not usable now, one request still in it
    go.write_text("")
    thread.join(30)
    assert answers == [0]
    pool.release(other, healthy=True)
    assert wait_gone([worker.pid]) == [] and pool.pids() == []


def wait_for_file(path: Path, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return path.exists()


def test_concurrent_first_actions_of_a_multiplex_key_start_one_process(
    pool: WorkerPool, tmp_path: Path
) -> None:
    tool = tmp_path / "worker.py"
    shutil.copy(WORKER, tool)  # once: the threads must not rewrite it under each other
    argv = (sys.executable, "worker.py", "--multiplex")
    identity = WorkerKey(argv, (), "json", True, (("worker.py", "k"),), "main")

    # Lease threads asking for one multiplex identity at once: one process serves them all.
    with ThreadPoolExecutor(max_workers=4) as threads:
        futures = [
            threads.submit(pool.acquire, identity, dict(os.environ), [("worker.py", tool)])
            for _ in range(4)
        ]
        got = [future.result(timeout=30)[0] for future in futures]
        assert len({w.pid for w in got}) == 1 and pool.starts == 1
        assert got[0].in_flight == 4
        for worker in got:
            pool.release(worker, healthy=True)
        assert got[0].in_flight == 0 and got[0].usable()


def test_a_worker_that_cannot_start_is_a_clear_fault_and_leaves_the_pool_clean(
    pool: WorkerPool, tmp_path: Path
) -> None:
    identity = WorkerKey(("./missing-tool",), (), "json", False, (), "main")
    with pytest.raises(WorkerFault, match="not an executable file"):
        pool.acquire(identity, dict(os.environ), [])
    assert pool.pids() == [] and pool.starts == 0
    worker = start(pool, tmp_path, "main")  # the cap was not eaten by the failed start
    assert served_pid(worker, tmp_path) == str(worker.pid)
    pool.release(worker, healthy=True)


@pytest.mark.parametrize(("failure", "ours"), [(errno.EAGAIN, True), (errno.EACCES, False)])
def test_a_start_refused_for_want_of_resources_is_the_executor_s_fault(
    pool: WorkerPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: int, ours: bool
) -> None:
    """No process, memory or descriptor left to spawn it: that is this executor's fault,
    reported INTERNAL (the server runs it again, perhaps elsewhere), not the action's
    tools' (FAILED_PRECONDITION, which no server retries)."""

    def refused(*args: object, **kwargs: object) -> object:
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(backend_process.subprocess, "Popen", refused)
    identity = WorkerKey(
        (sys.executable, "worker.py"), (), "json", False, (("worker.py", "k"),), "main"
    )
    tool = tmp_path / "worker.py"
    tool.write_text("")
    with pytest.raises(WorkerFault, match=os.strerror(failure)) as raised:
        pool.acquire(identity, dict(os.environ), [("worker.py", tool)])
    assert raised.value.ours is ours
    assert pool.pids() == []


def test_the_cancel_grace_reaches_the_worker_processes(tmp_path: Path) -> None:
    """One core, one setting: the executor's grace is the BackendProcess's."""
    pool = WorkerPool(
        tmp_path / "w", max_workers=1, memory_limit_mb=None, idle_s=60, cancel_grace_s=0.25
    )
    try:
        worker = start(pool, tmp_path, "main", multiplex=True)
        assert worker.backend.spec.cancel_grace_s == 0.25
        pool.release(worker, healthy=True)
    finally:
        pool.stop_all()


def test_multiplex_request_ids_begin_again_at_one_past_the_ids_in_flight(
    pool: WorkerPool, tmp_path: Path
) -> None:
    """Ids are int32 on the wire: after 2^31 - 1 they begin again at 1, and an id still
    in flight is not given out twice (it was: the worker's second answer to one id was
    taken for a protocol fault, and the worker was stopped with every request in it)."""
    worker = start(pool, tmp_path, "main", multiplex=True)
    signal_file = tmp_path / "c" / "o.txt"
    waiting: list[threading.Thread] = []
    results: list[int] = []
    for sandbox in "ab":  # ids 1 and 2, both waiting for the third request's output
        wait_for_c = request(
            "--wait-if", "remote", str(signal_file), "--out", "o.txt", "in.txt",
            sandbox=tmp_path / sandbox,
        )  # fmt: skip
        thread = threading.Thread(
            target=lambda r=wait_for_c: results.append(worker.call(r, 30).exit_code)
        )
        thread.start()
        waiting.append(thread)
        wait_started(tmp_path / sandbox / "started.txt")
    assert worker.backend.holds_id(1) and worker.backend.holds_id(2)
    worker._last_id = MAX_REQUEST_ID - 1
    assert worker._next_id() == MAX_REQUEST_ID  # the bound itself is an int32
    third = worker.call(request("--out", "o.txt", "in.txt", sandbox=tmp_path / "c"), 30)
    assert worker._last_id == 3  # 1 and 2 were passed over
    for thread in waiting:
        thread.join(30)
    assert third.exit_code == 0 and results == [0, 0]
    for sandbox in "abc":
        assert reported((tmp_path / sandbox / "o.txt").read_text())
    pool.release(worker, healthy=True)
    assert worker.in_flight == 0 and pool.pids() == [worker.pid]  # still warm


@pytest.mark.needs_root("it makes control groups")
def test_every_request_of_a_multiplex_worker_killed_for_memory_knows_why(tmp_path: Path) -> None:
    """The kernel kills the worker for passing its memory limit with two requests in it;
    the one whose release stops the worker and removes its group, and the one released
    after that, both learn it passed its limit."""
    confinement = Confinement(Limits(memory_mb=64), f"test-{os.getpid()}")
    pool = WorkerPool(
        tmp_path / "workers", max_workers=2, memory_limit_mb=None, idle_s=3600,
        confinement=confinement,
    )  # fmt: skip
    try:
        worker = start(pool, tmp_path, "main", multiplex=True)
        other = start(pool, tmp_path, "main", multiplex=True)
        thread, faults = waiting_in(other, tmp_path)
        with pytest.raises(WorkerFault):
            worker.call(request("--eat", "256", sandbox=tmp_path / "m"), 30)
        thread.join(30)
        assert len(faults) == 1
        pool.release(worker, healthy=False)  # stops it: its group is gone
        assert worker.group is not None and worker.group.pids() == set()
        pool.release(other, healthy=False)
        assert worker.passed_memory_limit() and other.passed_memory_limit()
    finally:
        pool.stop_all()
        confinement.clear()


@pytest.mark.needs_root("it makes control groups")
@pytest.mark.parametrize("failing", ["copy", "launch"])
def test_a_start_that_fails_before_its_process_leaves_no_home_nor_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """Its tool files could not be copied to its home (a full disk), or its launcher not
    built (no `env`): the home and the control group made for it went nowhere, one more
    per action that met the fault, for the executor's life."""
    confinement = Confinement(Limits(memory_mb=64), f"test-{os.getpid()}")
    pool = WorkerPool(
        tmp_path / "workers", max_workers=1, memory_limit_mb=None, idle_s=3600,
        confinement=confinement,
    )  # fmt: skip
    groups: list[Group] = []
    real_group = confinement.group

    def recorded_group(name: str) -> Group:
        groups.append(real_group(name))
        return groups[-1]

    monkeypatch.setattr(confinement, "group", recorded_group)

    def fails(*args: object, **kwargs: object) -> None:
        if failing == "copy":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise RuntimeError("env (coreutils) is needed to start a tenant's process")

    if failing == "copy":
        monkeypatch.setattr(workers.shutil, "copyfileobj", fails)
    else:
        monkeypatch.setattr(workers, "launch", fails)
    try:
        with pytest.raises((OSError, RuntimeError)):
            start(pool, tmp_path, "main")
        assert list((tmp_path / "workers" / "main").iterdir()) == []
        assert all(not d.exists() for g in groups for d in g.directories)
        assert pool.pids() == []
    finally:
        pool.stop_all()
        confinement.clear()


def test_a_tool_file_is_copied_never_through_a_symlink(tmp_path: Path) -> None:
    """The action's directory is the tenant's when a worker starts: a directory on a
    tool file's way swapped for a symlink made the executor (root) copy what it led to
    into the worker's home, which the tenant reads."""
    root = tmp_path / "action"
    (root / "tools").mkdir(parents=True)
    (root / "tools" / "run.sh").write_text("#!/bin/sh\n")
    (root / "tools" / "run.sh").chmod(0o751)
    workers.copy_tool_file(root / "tools" / "run.sh", "tools/run.sh", tmp_path / "copy.sh")
    assert (tmp_path / "copy.sh").read_text() == "#!/bin/sh\n"
    assert (tmp_path / "copy.sh").stat().st_mode & 0o777 == 0o751
    secret = tmp_path / "secret"
    (secret / "tools").mkdir(parents=True)
    (secret / "tools" / "run.sh").write_text("the executor's")
    shutil.rmtree(root / "tools")
    (root / "tools").symlink_to(secret / "tools")  # a directory on the way
    (root / "leaf.sh").symlink_to(secret / "tools" / "run.sh")  # the file itself
    for relative in ("tools/run.sh", "leaf.sh"):
        with pytest.raises(OSError) as refused:
            workers.copy_tool_file(root / relative, relative, tmp_path / "stolen")
        assert refused.value.errno in (errno.ELOOP, errno.ENOTDIR)
        assert not (tmp_path / "stolen").exists()
    # A tool file from elsewhere (the pool's own callers'), named otherwise in the home.
    (tmp_path / "own.py").write_text("print()\n")
    workers.copy_tool_file(tmp_path / "own.py", "tools/worker.py", tmp_path / "copied.py")
    assert (tmp_path / "copied.py").read_text() == "print()\n"
