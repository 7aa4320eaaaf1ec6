"""The executor's persistent workers: processes keyed by the WorkerKey recomputed from
what the action carried (its tenant included), started in a home directory holding
the worker's tool files. A singleplex worker serves one request at a time; a multiplex
one serves every concurrent action of its identity, its responses matched by request id.
The processes themselves are the local runtime's ``BackendProcess`` (one worker-process
core for both sides), driven from the lease threads through a shared pipe loop
(backends/loop_thread.py). A worker is discarded after any protocol error, timeout or
crash; idle ones are stopped after a while; the number of workers is capped (the least
recently used idle one makes room for a new one) and so is their total memory (idle ones
go largest first, the policy the daemon's reclaimer follows too: eviction.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from worker_runtime.backends.key import WorkerKey
from worker_runtime.backends.loop_thread import LoopThread
from worker_runtime.backends.process import BackendProcess, BackendSpec
from worker_runtime.config import RuntimeConfig
from worker_runtime.errors import BackendError, BackendStartError
from worker_runtime.eviction import largest_first
from worker_runtime.executor.disk import Usage, measure
from worker_runtime.executor.launch import launch
from worker_runtime.executor.limits import Confinement, Group
from worker_runtime.executor.removal import remove_tree
from worker_runtime.executor.sandbox import Sandbox
from worker_runtime.executor.tenants import RunAs, hand_over
from worker_runtime.protocol.messages import MAX_REQUEST_ID, WorkRequest, WorkResponse

LOGGER = logging.getLogger(__name__)
_NO_FOLLOW_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def copy_tool_file(source: Path, relative: str, target: Path) -> None:
    """Copies tool file ``source``, at ``relative`` in the action's directory, to
    ``target``, its mode too, never through a symlink from that directory on: it is the
    tenant's by the time a worker starts, and the executor copying may be root. OSError
    if it is not a regular file there (the input root holds no symlinks: something
    swapped one in). A ``source`` elsewhere (not ending in ``relative``) is opened from
    its own directory."""
    parts = Path(relative).parts
    if source.parts[-len(parts) :] == parts:
        root = source.parents[len(parts) - 1]
    else:
        root, parts = source.parent, (source.name,)
    fd = os.open(root, _NO_FOLLOW_DIRECTORY)
    try:
        for part in parts[:-1]:
            below = os.open(part, _NO_FOLLOW_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                       dir_fd=fd)  # fmt: skip
    finally:
        os.close(fd)
    with open(leaf, "rb") as reading:
        status = os.fstat(reading.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, f"tool file {relative} is not a regular file")
        with open(target, "wb") as copy:
            shutil.copyfileobj(reading, copy)
    os.chmod(target, stat.S_IMODE(status.st_mode))


#: How long a multiplex worker has to answer a cancel before it is discarded (by default;
#: `worker-runtime executor --cancel-grace`), and how long a response may stall mid-frame:
#: the same defaults as the local runtime's.
CANCEL_GRACE_S = RuntimeConfig.cancel_grace_s
FRAME_STALL_TIMEOUT_S = RuntimeConfig.frame_stall_timeout_s
#: A discarded worker is killed at once (no grace after SIGTERM): the pool's lock is held
#: while it goes, and an evicted or faulty worker has nothing to finish.
_STOP_GRACE_S = 0.0


class WorkerFault(RuntimeError):
    """The worker failed its request (crash, garbage, timeout). Unless ``worker_healthy``
    (a multiplex worker that answered the cancel of a timed-out request), the worker must
    be discarded."""

    def __init__(
        self,
        message: str,
        worker_healthy: bool = False,
        timed_out: bool = False,
        ours: bool = False,
    ) -> None:
        super().__init__(message)
        self.worker_healthy = worker_healthy
        #: The request ran past its timeout (rather than the worker failing).
        self.timed_out = timed_out
        #: It could not be started for a fault of the executor's, not of its tools.
        self.ours = ours


class WorkerCancelled(WorkerFault):
    """The request's lease was cancelled while the worker ran it. A singleplex worker is
    discarded (a Bazel-protocol worker cannot be told to stop its one request); a
    multiplex one that answered the cancel stays."""


class AcquireCancelled(RuntimeError):
    """The request's lease was cancelled while it waited for a worker (all busy at the
    cap), or the pool stopped (the executor is leaving): it never reached one."""


#: How often a waiting request looks at its lease's cancel flag.
_CANCEL_POLL_S = 0.05


@dataclass
class PersistentWorker:
    """One worker process of the executor: the runtime's ``BackendProcess`` (spawn,
    framing, multiplex routing by request id, cancel with a grace, reaping), driven from
    the executor's lease threads through the shared pipe loop."""

    identity: WorkerKey
    home: Path
    backend: BackendProcess
    #: Its control group (None: no limits), removed when it stops.
    group: Group | None = None
    #: What its home held when it started (its tool files).
    home_at_start: Usage = field(default_factory=Usage)
    #: Whether the kernel killed it for its memory, as its group said when it stopped.
    _out_of_memory: bool = False
    requests: int = 0
    last_used: float = field(default_factory=time.monotonic)
    #: Requests it is serving now (more than one only if multiplex).
    in_flight: int = 0
    #: The last multiplex request id given out (after 2^31 - 1, from 1 again).
    _last_id: int = 0
    _id_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def pid(self) -> int:
        return self.backend.pid

    def usable(self) -> bool:
        return self.backend.alive

    def discard_if_babbling(self) -> bool:
        """For an idle singleplex worker about to be reused: if it wrote while it had no
        request (a second answer to its last one, unread by the pipe loop yet), it is
        killed and True returned, so that the next action does not take those bytes for
        its own answer (a singleplex response carries no request id). Bytes the pipe loop
        read already, part of a message, count too. Asked here first (the kernel, and the
        framing's one flag): the pipe loop is asked, and killed it on, only if either says
        something is there, so that a clean reuse never waits on that loop."""
        if self.identity.multiplex:
            return False  # answers carry ids: a stray one is refused as it is read
        backend = self.backend
        if backend.unread_output_bytes() == 0 and not backend.framing.mid_message():
            return not backend.alive  # a worker the loop failed meanwhile is not reused
        return LoopThread.shared().run(self._discard_if_babbling())

    async def _discard_if_babbling(self) -> bool:
        if self.backend.discard_if_babbling():
            return True  # it logged what it saw: said once
        if self.backend.alive:
            return False
        # The loop read the stray answer first and failed the worker itself, silently.
        LOGGER.warning(
            "worker %d wrote while it had no request: discarded before its next action",
            self.pid,
        )
        return True

    def call(
        self, request: WorkRequest, timeout_s: float, cancelled: threading.Event | None = None
    ) -> WorkResponse:
        if cancelled is not None and cancelled.is_set():  # nothing sent: the worker is fine
            raise WorkerCancelled("the action's lease was cancelled", worker_healthy=True)
        request_id = self._next_id() if self.identity.multiplex else 0
        request = dataclasses.replace(request, request_id=request_id)
        response = LoopThread.shared().run(self._call(request, timeout_s, cancelled))
        self.requests += 1
        self.last_used = time.monotonic()
        return response

    def _next_id(self) -> int:
        """Ids are int32 on the wire: after 2^31 - 1 they begin again at 1, past every
        id the process still holds (in flight, a cancel's, a cancel answered lately)."""
        with self._id_lock:  # lease threads share a multiplex worker
            while True:
                self._last_id = self._last_id % MAX_REQUEST_ID + 1
                if not self.backend.holds_id(self._last_id):
                    return self._last_id

    async def _call(
        self, request: WorkRequest, timeout_s: float, cancelled: threading.Event | None
    ) -> WorkResponse:
        answer = asyncio.ensure_future(self.backend.call(request))
        deadline = time.monotonic() + timeout_s
        is_cancelled = False
        while not answer.done():
            is_cancelled = cancelled is not None and cancelled.is_set()
            left = deadline - time.monotonic()
            if is_cancelled or left <= 0:
                break
            await asyncio.wait([answer], timeout=min(left, _CANCEL_POLL_S))
        if answer.done():
            try:
                return answer.result()
            except BackendError as exc:
                raise WorkerFault(str(exc)) from None
        # The backend is asked to drop the request (a multiplex one gets a cancel and
        # stays if it answers in time; any other is killed); this returns once it no
        # longer works on it.
        answer.cancel()
        await asyncio.wait([answer])
        why = (
            "the action's lease was cancelled"
            if is_cancelled
            else f"no response within {timeout_s:.0f} s"
        )
        fault = WorkerCancelled if is_cancelled else WorkerFault
        if self.backend.alive:
            raise fault(
                f"{why} (the worker answered the cancel)",
                worker_healthy=True,
                timed_out=not is_cancelled,
            )
        raise fault(f"{why}; the worker was stopped", timed_out=not is_cancelled)

    def rss(self) -> int:
        try:
            root = psutil.Process(self.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0

    def home_grew(self) -> bool:
        """Whether its home holds more than it did when it started."""
        usage = measure(self.home, stop_past=self.home_at_start)
        return usage is not None and (
            bool(usage.unmeasurable)
            or usage.bytes > self.home_at_start.bytes
            or usage.entries > self.home_at_start.entries
        )

    def passed_memory_limit(self) -> bool:
        """Whether it was killed for passing its memory limit (still known once it is
        stopped and its group gone: a multiplex worker's other requests ask later)."""
        return self._out_of_memory or (self.group is not None and self.group.oom_killed())

    def stop(self) -> None:
        LoopThread.shared().run(self.backend.stop(grace_s=_STOP_GRACE_S))
        if self.group is not None:
            self._out_of_memory = self.group.oom_killed()
            self.group.remove()
        remove_tree(self.home)


class WorkerPool:
    def __init__(
        self,
        root: Path,
        max_workers: int,
        memory_limit_mb: int | None,
        idle_s: float,
        cancel_grace_s: float = CANCEL_GRACE_S,
        sandbox: Sandbox | None = None,
        confinement: Confinement | None = None,
        max_response_bytes: int | None = None,
    ):
        self.root = root
        #: The largest answer a worker may give (the action's output budget): a longer one
        #: is a protocol error, read no further.
        self.max_response_bytes = max_response_bytes
        #: Each worker's view (None: the executor's own), with the executor's actions/
        #: (where each request's directory appears) writable in it.
        self.sandbox = sandbox
        self.actions = root.parent / "actions"
        #: Each worker's resource limits (None: none).
        self.confinement = confinement
        self.cancel_grace_s = cancel_grace_s
        self.max_workers = max_workers
        self.memory_limit = memory_limit_mb * (1 << 20) if memory_limit_mb else None
        self.idle_s = idle_s
        self._lock = threading.Condition()
        self._idle: list[PersistentWorker] = []
        self._all: dict[int, PersistentWorker] = {}
        #: Workers being started (outside the lock), by identity.
        self._starting: dict[WorkerKey, int] = {}
        self._serial = 0
        #: Set by stop_all: a worker started after it is not kept.
        self._stopped = False
        #: Threads stopping reaped workers (stop_all waits for them).
        self._reapers: list[threading.Thread] = []
        self.starts = 0
        self.reuses = 0
        self.evictions = 0

    def acquire(
        self,
        identity: WorkerKey,
        env: dict[str, str],
        tools: list[tuple[str, Path]],
        run_as: RunAs = RunAs(),  # noqa: B008 - frozen
        cancelled: threading.Event | None = None,
    ) -> tuple[PersistentWorker, bool]:
        """(worker, whether it was already running). An idle worker of this identity (for
        a multiplex identity, its one worker, busy or not, or the one being started), or a
        new one (evicting idle ones of others when at the cap, or waiting for one to
        become idle). Workers being started count against the cap. A wait ends with
        AcquireCancelled soon after ``cancelled`` is set."""
        with self._lock:
            while True:
                if cancelled is not None and cancelled.is_set():
                    raise AcquireCancelled("cancelled while it waited for a persistent worker")
                if self._stopped:
                    raise AcquireCancelled("the executor is stopping: no worker is started")
                if identity.multiplex and identity in self._starting:
                    self._lock.wait(timeout=_CANCEL_POLL_S)  # its one process is on its way
                    continue
                candidates = self._all.values() if identity.multiplex else reversed(self._idle)
                for worker in list(candidates):
                    if worker.identity == identity and worker.usable():
                        if worker.in_flight == 0 and worker.discard_if_babbling():
                            self._idle.remove(worker)
                            self._discard_locked(worker)
                            continue
                        if worker in self._idle:
                            self._idle.remove(worker)
                        worker.in_flight += 1
                        self.reuses += 1
                        return worker, True
                if len(self._all) + sum(self._starting.values()) < self.max_workers:
                    break
                if self._idle:
                    self._discard_locked(self._idle.pop(0))  # least recently used
                    self.evictions += 1
                    continue
                self._lock.wait(timeout=_CANCEL_POLL_S)  # woken by a release
            self._serial += 1
            serial = self._serial
            self._starting[identity] = self._starting.get(identity, 0) + 1
        try:
            worker = self._start(identity, env, tools, serial, run_as)
        except BaseException:
            with self._lock:
                self._started_locked(identity)
            raise
        with self._lock:
            self._started_locked(identity)  # in _all before anyone waiting looks again
            if not self._stopped:
                self._all[worker.pid] = worker
                worker.in_flight = 1
                self.starts += 1
                return worker, False
        worker.stop()  # started while the pool stopped: it would outlive the executor
        raise AcquireCancelled("the executor is stopping: no new persistent worker is kept")

    def _started_locked(self, identity: WorkerKey) -> None:
        self._starting[identity] -= 1
        if not self._starting[identity]:
            del self._starting[identity]
        self._lock.notify_all()

    def _start(
        self,
        identity: WorkerKey,
        env: dict[str, str],
        tools: list[tuple[str, Path]],
        serial: int,
        run_as: RunAs,
    ) -> PersistentWorker:
        tenant = identity.instance.replace("/", "_") or "_default"
        # The tenant's directory stays the executor's (0711: its workers pass through to
        # their homes and list nothing), so that no tenant process can rename what is in
        # it; the home is made and filled by the executor, then handed over: its own and
        # private, the tool files still the executor's (read, never changed).
        tenant_dir = self.root / tenant
        tenant_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        home = tenant_dir / f"{identity.digest[:16]}-{serial}"
        group: Group | None = None
        try:
            remove_tree(home)
            home.mkdir(mode=0o700)
            for relative, source in tools:
                target = home / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                copy_tool_file(source, relative, target)
            hand_over(home, run_as)
            at_start = measure(home) or Usage()  # what a disk limit does not count
            if self.confinement is not None:
                group = self.confinement.group("worker")
            # The command the worker's own runs under (empty: Popen switches the uid). Its
            # home holds only its tool files when it starts: each entry at the top of it is
            # mounted read-only in the sandbox, with all below it (a directory of tools
            # takes nothing new either); what the worker makes beside them is its own.
            tool_entries = sorted({str(home / Path(relative).parts[0]) for relative, _ in tools})
            started = launch(
                [], run_as=run_as, sandbox=self.sandbox, group=group,
                writable=[str(home), str(self.actions)], cwd=str(home),
                network=identity.network, env=env, fixed=tool_entries, program=identity.argv[0],
            )  # fmt: skip
        except BaseException:  # a full disk, no launcher: neither its home nor group is kept
            if group is not None:
                group.remove()
            remove_tree(home)
            raise
        spec = BackendSpec(
            key=identity,
            env=env,
            cwd=str(home),
            cancellable=identity.multiplex,
            frame_stall_timeout_s=FRAME_STALL_TIMEOUT_S,
            cancel_grace_s=self.cancel_grace_s,
            # Out of the tenant's reach: the executor's, private.
            log_dir=self.root.parent / "worker-logs" / tenant,
            run_as=started.run_as.ids,
            launcher=tuple(started.argv),
            launcher_env=started.env,
            max_response_bytes=self.max_response_bytes,
        )
        backend = BackendProcess(spec)
        worker = PersistentWorker(identity, home, backend, group, at_start)
        try:
            LoopThread.shared().run(backend.start())
        except BackendStartError as exc:  # nothing was spawned: its group and home go
            worker.stop()
            raise WorkerFault(
                f"the action's worker could not be started: {exc}", ours=exc.ours
            ) from None
        except BaseException:  # started, but its pipes could not be set up: nothing is kept
            worker.stop()
            raise
        return worker

    def release(self, worker: PersistentWorker, healthy: bool) -> None:
        with self._lock:
            worker.in_flight -= 1
            if not healthy:
                self._discard_locked(worker)  # a multiplex worker's other requests fail too
            elif not worker.usable():
                # It takes no more requests (its stdin closed) but may still answer those
                # it has: the last of them discards it (its backend is killed within 1 s).
                if worker.in_flight == 0:
                    self._discard_locked(worker)
            elif worker.in_flight == 0:
                worker.last_used = time.monotonic()
                self._idle.append(worker)
            self._enforce_memory_locked()
            self._lock.notify_all()

    def _discard_locked(self, worker: PersistentWorker) -> None:
        if self._all.pop(worker.pid, None) is not None:
            worker.stop()

    def _enforce_memory_locked(self) -> None:
        if self.memory_limit is None:
            return
        total = sum(w.rss() for w in self._all.values())
        for worker, _ in largest_first(self._idle, PersistentWorker.rss, total, self.memory_limit):
            self._idle.remove(worker)
            self._discard_locked(worker)
            self.evictions += 1

    def reap_idle(self) -> None:
        """Stops the workers idle past ``idle_s``: taken out of the pool under its lock,
        stopped on a thread of their own. The caller is the executor's heartbeat (the
        UpdateBotSession loop), and a stop may take long (a worker's home of many files
        to remove): held up past the server's keepalive, the bot would lose every lease
        it runs."""
        now = time.monotonic()
        with self._lock:
            reaped = [w for w in self._idle if now - w.last_used > self.idle_s]
            for worker in reaped:
                self._idle.remove(worker)
                self._all.pop(worker.pid, None)
                self.evictions += 1
            self._reapers = [r for r in self._reapers if r.is_alive()]
            if reaped:
                reaper = threading.Thread(
                    target=_stop_each, args=(reaped,), name="worker-reaper", daemon=True
                )
                reaper.start()
                self._reapers.append(reaper)
            self._lock.notify_all()

    def pids(self) -> list[int]:
        with self._lock:
            return list(self._all)

    def stop_all(self) -> None:
        with self._lock:
            self._stopped = True  # a worker still being started is stopped once it is
            for worker in list(self._all.values()):
                self._discard_locked(worker)
            self._idle.clear()
            reapers, self._reapers = self._reapers, []
        for reaper in reapers:  # the reaped ones are gone too before the executor is
            reaper.join()


def _stop_each(workers: list[PersistentWorker]) -> None:
    for worker in workers:
        try:
            worker.stop()
        except Exception:  # one that cannot be stopped holds back none of the others
            LOGGER.exception("stopping idle worker %d failed", worker.pid)
