"""Pools of backend processes for one worker key: singleplex (N processes, one request
each) and multiplex (one process, many requests routed by ``request_id``).

Pools also take reclamation orders: stop an idle process now (idle too long, over the
memory budget), or recycle a busy one after its current work (over its own limit).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from worker_runtime.backends.process import BackendProcess, BackendSpec
from worker_runtime.errors import BackendStartError
from worker_runtime.protocol.messages import (
    MAX_REQUEST_ID,
    WorkInput,
    WorkRequest,
    WorkResponse,
)

LOGGER = logging.getLogger(__name__)


class BackendPool:
    """The processes of one worker key. ``call`` runs one request on one of them."""

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.retired = False
        self.stopped = False
        self.processes: set[BackendProcess] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        #: Requests inside ``call`` or ``call_retry`` (waiting for a slot or a start
        #: included): counted before their first wait, so a pool in use is never unused.
        self.users = 0

    async def call(
        self, arguments: tuple[str, ...], inputs: tuple[WorkInput, ...], verbosity: int
    ) -> WorkResponse:
        raise NotImplementedError

    async def call_retry(
        self, arguments: tuple[str, ...], inputs: tuple[WorkInput, ...], verbosity: int
    ) -> WorkResponse:
        """Runs a retry of a request whose backend died. By default like any other request."""
        return await self.call(arguments, inputs, verbosity)

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self.processes)

    @property
    def unused(self) -> bool:
        """No process, none stopping, and no request in it: nothing is lost if it goes."""
        return not self.processes and not self._stopping and self.users == 0

    def retire(self) -> None:
        """Stops taking new work; idle processes stop now, busy ones when their work is done."""
        self.retired = True
        for proc in list(self.processes):
            if proc.in_flight == 0:
                self._discard(proc)

    def stop_if_idle(self, proc: BackendProcess, why: str) -> bool:
        """Stops ``proc`` now if it has nothing in flight; returns whether it did."""
        if proc not in self.processes or proc.in_flight:
            return False
        LOGGER.info("stopping idle %s: %s", proc.describe(), why)
        self._discard(proc)
        return True

    def recycle(self, proc: BackendProcess, why: str) -> None:
        """Stops ``proc`` once its current work is done; it takes no new work meanwhile."""
        if not proc.recycle:
            LOGGER.info("recycling %s after its current work: %s", proc.describe(), why)
        proc.recycle = True
        self.stop_if_idle(proc, why)

    def _release(self, proc: BackendProcess) -> bool:
        """After a request: stops ``proc`` if it is dead, retired or recycled; else keeps it."""
        if not proc.alive:
            if proc.in_flight == 0:  # still running if only its stdin closed: stopped
                self._discard(proc)
            return False  # with requests left, it goes once they end (when_gone)
        if (self.retired or proc.recycle) and proc.in_flight == 0:
            self._discard(proc)
            return False
        return not (self.retired or proc.recycle)

    def _discard(self, proc: BackendProcess) -> None:
        self.processes.discard(proc)
        task = asyncio.create_task(proc.stop(), name=f"stop-{proc.pid}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _spawn(self) -> BackendProcess:
        if self.stopped:
            raise BackendStartError("the worker runtime is stopping; no backend is started")
        proc = BackendProcess(self.spec)
        try:
            await proc.start()
        except asyncio.CancelledError:  # mid-start: the process may exist, untracked
            await asyncio.shield(proc.stop())
            raise
        if self.stopped:  # stopped while it started: its stop did not see it
            await asyncio.shield(proc.stop())
            raise BackendStartError("the worker runtime is stopping; no backend is started")
        self.processes.add(proc)
        proc.when_gone = self._forget
        return proc

    def _forget(self, proc: BackendProcess) -> None:
        """Drops a process that ended (crashed, killed, stopped) from the pool's books,
        idle or not, so that a long-lived daemon keeps no dead ones."""
        self.processes.discard(proc)

    async def stop(self) -> None:
        """Stops every process, including those already being stopped; none starts after."""
        self.retired = self.stopped = True
        procs, self.processes = list(self.processes), set()
        await asyncio.gather(*(p.stop() for p in procs), *self._stopping)


class SingleplexPool(BackendPool):
    """Up to ``max_instances`` processes, each serving one request at a time (FIFO wait)."""

    def __init__(self, spec: BackendSpec, max_instances: int) -> None:
        super().__init__(spec)
        self.max_instances = max_instances
        self._slots = asyncio.Semaphore(max_instances)
        self._idle: list[BackendProcess] = []

    def _forget(self, proc: BackendProcess) -> None:
        super()._forget(proc)
        if proc in self._idle:
            self._idle.remove(proc)

    async def call(
        self, arguments: tuple[str, ...], inputs: tuple[WorkInput, ...], verbosity: int
    ) -> WorkResponse:
        self.users += 1
        try:
            async with self._slots:
                proc = None
                while self._idle:
                    candidate = self._idle.pop()
                    if candidate.alive and candidate in self.processes and not candidate.recycle:
                        if candidate.discard_if_babbling():
                            self.processes.discard(candidate)
                            continue
                        proc = candidate
                        break
                if proc is None:
                    proc = await self._spawn()
                return await self._run_on(proc, arguments, inputs, verbosity)
        finally:
            self.users -= 1

    async def call_retry(
        self, arguments: tuple[str, ...], inputs: tuple[WorkInput, ...], verbosity: int
    ) -> WorkResponse:
        """Retries run on a fresh backend, never on an idle warm one: the request may be
        what killed the first (a poison request), and would take a second down with it.
        At the cap, the least recently used idle backend is stopped to make room."""
        self.users += 1
        try:
            async with self._slots:
                if len(self.processes) >= self.max_instances and self._idle:
                    self._discard(self._idle.pop(0))
                proc = await self._spawn()
                return await self._run_on(proc, arguments, inputs, verbosity)
        finally:
            self.users -= 1

    async def _run_on(
        self,
        proc: BackendProcess,
        arguments: tuple[str, ...],
        inputs: tuple[WorkInput, ...],
        verbosity: int,
    ) -> WorkResponse:
        try:
            return await proc.call(WorkRequest(arguments, inputs, 0, verbosity=verbosity))
        finally:
            if self._release(proc):
                self._idle.append(proc)


class MultiplexPool(BackendPool):
    """One process with many requests in flight. An id is given out again only after 2^31
    requests, and never while a process still holds it (a cancelled request's included)."""

    def __init__(self, spec: BackendSpec, max_retry_processes: int) -> None:
        super().__init__(spec)
        #: Retries run on processes of their own; at most this many at once.
        self._retry_slots = asyncio.Semaphore(max_retry_processes)
        self._proc: BackendProcess | None = None
        self._starting = asyncio.Lock()
        self._ids = itertools.count(1)
        #: Set once the ids passed 2^31 - 1 and began again at 1 (each then checked).
        self._wrapped = False

    def _usable(self, proc: BackendProcess | None) -> bool:
        return proc is not None and proc.alive and not proc.recycle and proc in self.processes

    async def _current(self) -> BackendProcess:
        proc = self._proc
        if proc is not None and self._usable(proc):
            return proc
        async with self._starting:
            if self._proc is None or not self._usable(self._proc):
                self._proc = await self._spawn()
            return self._proc

    def _next_id(self) -> int:
        request_id = next(self._ids)
        if request_id <= MAX_REQUEST_ID and not self._wrapped:
            return request_id
        # After 2^31 requests: from 1 again, past every id a process still holds.
        self._wrapped = True
        while True:
            if request_id > MAX_REQUEST_ID:
                self._ids = itertools.count(1)
                request_id = next(self._ids)
            if not any(p.holds_id(request_id) for p in self.processes):
                return request_id
            request_id = next(self._ids)

    async def call_retry(
        self, arguments: tuple[str, ...], inputs: tuple[WorkInput, ...], verbosity: int
    ) -> WorkResponse:
        """Retries run alone on a process of their own: when one of several requests killed
        the shared process, we cannot tell which, and a poison request retried on the shared
        process would take the others' retries down with it. At most ``max_instances``
        retry processes run at once; the other retries wait for one."""
        self.users += 1
        try:
            async with self._retry_slots:
                proc = await self._spawn()
                try:
                    return await proc.call(WorkRequest(arguments, inputs, 1, verbosity=verbosity))
                finally:
                    self._discard(proc)
        finally:
            self.users -= 1

    async def call(
        self, arguments: tuple[str, ...], inputs: tuple[WorkInput, ...], verbosity: int
    ) -> WorkResponse:
        self.users += 1
        try:
            proc = await self._current()
            request = WorkRequest(arguments, inputs, self._next_id(), verbosity=verbosity)
            try:
                return await proc.call(request)
            finally:
                self._release(proc)
        finally:
            self.users -= 1
