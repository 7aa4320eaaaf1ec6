"""The executor's persistent workers: processes keyed by (instance, worker key recomputed
from what the action carried), each serving one request at a time, started in a home
directory holding the worker's tool files. A worker is discarded after any protocol
error, timeout or crash; idle ones are stopped after a while; the number of workers and
their total memory are capped (least recently used idle ones go first)."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from worker_runtime.protocol.framing import JsonFraming, ProtoFraming
from worker_runtime.protocol.messages import WorkRequest, WorkResponse

_SETPRIV = shutil.which("setpriv")


@dataclass(frozen=True)
class WorkerIdentity:
    """What makes two actions able to share a worker process."""

    instance: str
    key: str
    protocol: str


class WorkerFault(RuntimeError):
    """The worker failed its request (crash, garbage, timeout); it has been discarded."""


class WorkerCancelled(WorkerFault):
    """The request's lease was cancelled while the worker ran it; the worker is discarded
    (a Bazel-protocol worker cannot be told to stop one request)."""


@dataclass
class PersistentWorker:
    identity: WorkerIdentity
    home: Path
    process: subprocess.Popen[bytes]
    log: Path
    requests: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def call(
        self, request: WorkRequest, timeout_s: float, cancelled: threading.Event | None = None
    ) -> WorkResponse:
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
                raise WorkerFault(f"no response within {timeout_s:.0f} s")
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

    def rss(self) -> int:
        try:
            root = psutil.Process(self.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0

    def stop(self) -> None:
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
        self._busy: set[int] = set()
        self._all: dict[int, PersistentWorker] = {}
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
    ) -> PersistentWorker:
        """An idle worker of this identity, or a new one (evicting idle ones of others
        when at the cap, or waiting for one to become idle)."""
        with self._lock:
            while True:
                for worker in reversed(self._idle):
                    if worker.identity == identity and worker.process.poll() is None:
                        self._idle.remove(worker)
                        self._busy.add(worker.pid)
                        self.reuses += 1
                        return worker
                if len(self._all) < self.max_workers:
                    break
                if self._idle:
                    self._discard_locked(self._idle.pop(0))  # least recently used
                    self.evictions += 1
                    continue
                self._lock.wait(timeout=1.0)
            self._serial += 1
            serial = self._serial
        worker = self._start(identity, argv, env, tools, serial)
        with self._lock:
            self._all[worker.pid] = worker
            self._busy.add(worker.pid)
            self.starts += 1
        return worker

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
        command = [*argv, "--persistent_worker"]
        if _SETPRIV:  # the worker dies with the executor (SIGKILL included)
            command = [_SETPRIV, "--pdeathsig", "KILL", "--", *command]
        with open(log, "ab") as err:
            process = subprocess.Popen(
                command, cwd=home, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True,
            )  # fmt: skip
        return PersistentWorker(identity, home, process, log)

    def release(self, worker: PersistentWorker, healthy: bool) -> None:
        with self._lock:
            self._busy.discard(worker.pid)
            if healthy and worker.process.poll() is None:
                worker.last_used = time.monotonic()
                self._idle.append(worker)
            else:
                self._discard_locked(worker)
            self._enforce_memory_locked()
            self._lock.notify_all()

    def _discard_locked(self, worker: PersistentWorker) -> None:
        self._all.pop(worker.pid, None)
        worker.stop()

    def _enforce_memory_locked(self) -> None:
        if self.memory_limit is None:
            return
        while self._idle and sum(w.rss() for w in self._all.values()) > self.memory_limit:
            self._discard_locked(self._idle.pop(0))
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
