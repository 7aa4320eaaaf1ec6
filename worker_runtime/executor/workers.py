"""The executor's persistent workers: processes keyed by (instance, worker key recomputed
from what the action carried, protocol, multiplex), started in a home directory holding
the worker's tool files. A singleplex worker serves one request at a time; a multiplex
one serves every concurrent action of its identity, its responses matched by request id.
A worker is discarded after any protocol error, timeout or crash; idle ones are stopped
after a while; the number of workers is capped (the least recently used idle one makes
room for a new one) and so is their total memory (idle ones go largest first, the policy
the daemon's reclaimer follows too: eviction.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from worker_runtime.config import RuntimeConfig
from worker_runtime.eviction import largest_first
from worker_runtime.protocol.framing import JsonFraming, ProtoFraming
from worker_runtime.protocol.messages import WorkRequest, WorkResponse
from worker_runtime.spawn import dying_with_parent


@dataclass(frozen=True)
class WorkerIdentity:
    """What makes two actions able to share a worker process."""

    instance: str
    key: str
    protocol: str
    #: One process takes all concurrent requests of the identity (request ids).
    multiplex: bool = False


#: How long a multiplex worker has to answer a cancel before it is discarded (the same
#: default as the local runtime's ``cancel_grace_s``).
CANCEL_GRACE_S = RuntimeConfig.cancel_grace_s


class WorkerFault(RuntimeError):
    """The worker failed its request (crash, garbage, timeout). Unless ``worker_healthy``
    (a multiplex worker that answered the cancel of a timed-out request), the worker must
    be discarded."""

    def __init__(self, message: str, worker_healthy: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.worker_healthy = worker_healthy
        #: The request ran past its timeout (rather than the worker failing).
        self.timed_out = timed_out


class WorkerCancelled(WorkerFault):
    """The request's lease was cancelled while the worker ran it. A singleplex worker is
    discarded (a Bazel-protocol worker cannot be told to stop its one request); a
    multiplex one that answered the cancel stays."""


class _Demultiplexer:
    """Reads a multiplex worker's responses on a thread of its own and hands each to the
    request with its id; when the worker dies or babbles, every waiting request fails."""

    def __init__(self, worker: PersistentWorker) -> None:
        self.worker = worker
        self.framing = JsonFraming() if worker.identity.protocol == "json" else ProtoFraming()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, Future[WorkResponse]] = {}
        self.broken: str | None = None
        threading.Thread(target=self._read, name=f"mux-{worker.pid}", daemon=True).start()

    def register(self) -> tuple[int, Future[WorkResponse]]:
        answer: Future[WorkResponse] = Future()
        with self._lock:
            if self.broken is not None:
                raise WorkerFault(self.broken)
            request_id = next(self._ids)
            self._waiting[request_id] = answer
        return request_id, answer

    def forget(self, request_id: int) -> None:
        with self._lock:
            self._waiting.pop(request_id, None)

    def _read(self) -> None:
        assert self.worker.process.stdout is not None
        fd = self.worker.process.stdout.fileno()
        try:
            while True:
                data = os.read(fd, 1 << 16)
                if not data:
                    self._fail(
                        f"the worker exited (status {self.worker.process.poll()}); "
                        f"its log: {self.worker.log}"
                    )
                    return
                for response in self.framing.feed(data):
                    with self._lock:
                        answer = self._waiting.pop(response.request_id, None)
                    if answer is not None:
                        answer.set_result(response)
        except Exception as exc:  # a babbling worker, or its pipe closed under us
            self._fail(f"the worker wrote something that is not a response: {exc}")

    def _fail(self, message: str) -> None:
        with self._lock:
            self.broken = message
            waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            answer.set_exception(WorkerFault(message))


@dataclass
class PersistentWorker:
    identity: WorkerIdentity
    home: Path
    process: subprocess.Popen[bytes]
    log: Path
    requests: int = 0
    last_used: float = field(default_factory=time.monotonic)
    #: Requests it is serving now (more than one only if multiplex).
    in_flight: int = 0
    _mux: _Demultiplexer | None = field(default=None, repr=False)
    _write_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.identity.multiplex:
            self._mux = _Demultiplexer(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def usable(self) -> bool:
        return self.process.poll() is None and (self._mux is None or self._mux.broken is None)

    def _write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            with self._write_lock:
                self.process.stdin.write(data)
                self.process.stdin.flush()
        except OSError as exc:
            raise WorkerFault(f"writing the request failed: {exc}") from None

    def call(
        self, request: WorkRequest, timeout_s: float, cancelled: threading.Event | None = None
    ) -> WorkResponse:
        if cancelled is not None and cancelled.is_set():  # nothing sent: the worker is fine
            raise WorkerCancelled("the action's lease was cancelled", worker_healthy=True)
        if self._mux is not None:
            return self._call_multiplex(self._mux, request, timeout_s, cancelled)
        framing = JsonFraming() if self.identity.protocol == "json" else ProtoFraming()
        assert self.process.stdin and self.process.stdout
        try:
            self.process.stdin.write(framing.encode(request))
            self.process.stdin.flush()
        except OSError as exc:
            raise WorkerFault(f"writing the request failed: {exc}") from None
        deadline = time.monotonic() + timeout_s
        fd = self.process.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerFault(f"no response within {timeout_s:.0f} s", timed_out=True)
            if cancelled is not None and cancelled.is_set():
                raise WorkerCancelled("the action's lease was cancelled")
            ready, _, _ = select.select([fd], [], [], min(left, 0.05))
            if not ready:
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                raise WorkerFault(
                    f"the worker exited (status {self.process.poll()}) before answering; "
                    f"its log: {self.log}"
                )
            try:
                responses = framing.feed(data)
            except Exception as exc:  # a babbling worker
                raise WorkerFault(
                    f"the worker wrote something that is not a response: {exc}"
                ) from None
            if responses:
                self.requests += 1
                self.last_used = time.monotonic()
                return responses[0]

    def _call_multiplex(
        self,
        mux: _Demultiplexer,
        request: WorkRequest,
        timeout_s: float,
        cancelled: threading.Event | None,
    ) -> WorkResponse:
        request_id, answer = mux.register()
        self._write(mux.framing.encode(dataclasses.replace(request, request_id=request_id)))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                response = answer.result(timeout=0.05)
            except FutureTimeout:
                pass
            else:
                self.requests += 1
                self.last_used = time.monotonic()
                return response
            is_cancelled = cancelled is not None and cancelled.is_set()
            if is_cancelled or time.monotonic() > deadline:
                break
        # Ask the worker to drop the request; it stays only if it answers in time.
        why = (
            "the action's lease was cancelled"
            if is_cancelled
            else f"no response within {timeout_s:.0f} s"
        )
        fault = WorkerCancelled if is_cancelled else WorkerFault
        late = not is_cancelled
        self._write(
            mux.framing.encode(WorkRequest(arguments=(), request_id=request_id, cancel=True))
        )
        try:
            answer.result(timeout=CANCEL_GRACE_S)
        except FutureTimeout:
            mux.forget(request_id)
            raise fault(
                f"{why}, and the worker did not answer the cancel", timed_out=late
            ) from None
        except WorkerFault as exc:
            raise fault(f"{why}; then {exc}", timed_out=late) from None
        raise fault(f"{why} (the worker answered the cancel)", worker_healthy=True, timed_out=late)

    def rss(self) -> int:
        try:
            root = psutil.Process(self.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0

    def stop(self) -> None:
        if self.process.returncode is None:  # not reaped yet: the group id is still its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)


class WorkerPool:
    def __init__(self, root: Path, max_workers: int, memory_limit_mb: int | None, idle_s: float):
        self.root = root
        self.max_workers = max_workers
        self.memory_limit = memory_limit_mb * (1 << 20) if memory_limit_mb else None
        self.idle_s = idle_s
        self._lock = threading.Condition()
        self._idle: list[PersistentWorker] = []
        self._all: dict[int, PersistentWorker] = {}
        #: Workers being started (outside the lock), by identity.
        self._starting: dict[WorkerIdentity, int] = {}
        self._serial = 0
        self.starts = 0
        self.reuses = 0
        self.evictions = 0

    def acquire(
        self,
        identity: WorkerIdentity,
        argv: list[str],
        env: dict[str, str],
        tools: list[tuple[str, Path]],
    ) -> tuple[PersistentWorker, bool]:
        """(worker, whether it was already running). An idle worker of this identity (for
        a multiplex identity, its one worker, busy or not, or the one being started), or a
        new one (evicting idle ones of others when at the cap, or waiting for one to
        become idle). Workers being started count against the cap."""
        with self._lock:
            while True:
                if identity.multiplex and identity in self._starting:
                    self._lock.wait(timeout=1.0)  # its one process is on its way
                    continue
                candidates = self._all.values() if identity.multiplex else reversed(self._idle)
                for worker in list(candidates):
                    if worker.identity == identity and worker.usable():
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
                self._lock.wait(timeout=1.0)
            self._serial += 1
            serial = self._serial
            self._starting[identity] = self._starting.get(identity, 0) + 1
        try:
            worker = self._start(identity, argv, env, tools, serial)
        except BaseException:
            with self._lock:
                self._started_locked(identity)
            raise
        with self._lock:
            self._started_locked(identity)  # in _all before anyone waiting looks again
            self._all[worker.pid] = worker
            worker.in_flight = 1
            self.starts += 1
        return worker, False

    def _started_locked(self, identity: WorkerIdentity) -> None:
        self._starting[identity] -= 1
        if not self._starting[identity]:
            del self._starting[identity]
        self._lock.notify_all()

    def _start(
        self,
        identity: WorkerIdentity,
        argv: list[str],
        env: dict[str, str],
        tools: list[tuple[str, Path]],
        serial: int,
    ) -> PersistentWorker:
        tenant = identity.instance.replace("/", "_") or "_default"
        home = self.root / tenant / f"{identity.key[:16]}-{serial}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        for relative, source in tools:
            target = home / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        log = home.parent / f"{home.name}.log"
        # The worker dies with the executor (SIGKILL included). The kernel sends the
        # signal when the *thread* that started it ends: the executor starts workers from
        # its lease threads, which live as long as it does.
        command = dying_with_parent([*argv, "--persistent_worker"])
        with open(log, "ab") as err:
            process = subprocess.Popen(
                command, cwd=home, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True,
            )  # fmt: skip
        return PersistentWorker(identity, home, process, log)

    def release(self, worker: PersistentWorker, healthy: bool) -> None:
        with self._lock:
            worker.in_flight -= 1
            if not (healthy and worker.usable()):
                self._discard_locked(worker)  # a multiplex worker's other requests fail too
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
        now = time.monotonic()
        with self._lock:
            for worker in [w for w in self._idle if now - w.last_used > self.idle_s]:
                self._idle.remove(worker)
                self._discard_locked(worker)
                self.evictions += 1
            self._lock.notify_all()

    def pids(self) -> list[int]:
        with self._lock:
            return list(self._all)

    def stop_all(self) -> None:
        with self._lock:
            for worker in list(self._all.values()):
                self._discard_locked(worker)
            self._idle.clear()
