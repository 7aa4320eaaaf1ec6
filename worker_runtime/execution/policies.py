"""The policies every routing shares, each a wrapper around an Executor: a timeout, a
retry on a fresh backend, a local fallback for a failed remote run, and `auto`'s choice."""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable

from worker_runtime.execution.deadlines import Deadlines
from worker_runtime.execution.executor import Executor
from worker_runtime.execution.outcome import Failure, FailureKind, Outcome, WorkRequest, note

LOGGER = logging.getLogger(__name__)


#: What a Timeout around local runs says it stopped.
STOPPED_LOCALLY = (
    "a backend that was running it was stopped, or asked to cancel if it is a cancellable "
    "multiplex one"
)


class Timeout:
    """Cancels the inner run once ``request.timeout_s`` (if > 0) has passed since the
    request arrived (``started``; or since this run began, then given to what it runs),
    on one event-loop timer for every request (execution/deadlines.py). Every wrapper
    counts from the same arrival: a local run after a failed remote one has what is left.
    ``stopped`` says what a timeout stops."""

    def __init__(self, inner: Executor, stopped: str = STOPPED_LOCALLY) -> None:
        self.inner = inner
        self.stopped = stopped
        self._deadlines = Deadlines()

    async def run(self, request: WorkRequest) -> Outcome:
        left = request.time_left()
        if left is None:
            return await self.inner.run(request)
        if not request.started:
            request = dataclasses.replace(request, started=time.monotonic())
        if left > 0:
            try:
                async with self._deadlines.timeout(left) as scope:
                    return await self.inner.run(request)
            except TimeoutError:
                if not scope.expired():
                    raise
        LOGGER.info("request timed out after %d s", request.timeout_s)
        return Failure(
            FailureKind.TIMED_OUT,
            f"the request ran past its timeout of {request.timeout_s} s (counted from its "
            f"arrival, any wait for a free backend or remote thread included) and was "
            f"cancelled; {self.stopped}",
            timed_out_after_s=request.timeout_s,
        )


class Retry:
    """Runs a request again, on a fresh backend, when its backend failed while running it
    (up to ``retries`` times); each retry adds a note to the outcome."""

    def __init__(self, inner: Executor, retries: int) -> None:
        self.inner = inner
        self.retries = retries

    async def run(self, request: WorkRequest) -> Outcome:
        outcome = await self.inner.run(request)  # requests arrive as their attempt 0
        attempt = 0
        notes: list[str] = []
        while isinstance(outcome, Failure) and outcome.kind is FailureKind.BACKEND_FAILED:
            if attempt >= self.retries:
                if attempt:
                    return dataclasses.replace(
                        outcome,
                        message=f"{outcome.message}\n  the request had been retried {attempt} "
                        "time(s) on a fresh backend",
                    )
                return outcome
            attempt += 1
            notes.append(
                note(
                    f"{outcome.short}; the request was retried on a fresh backend process "
                    f"(retry {attempt} of {self.retries})."
                )
            )
            outcome = await self.inner.run(dataclasses.replace(request, attempt=attempt))
        return outcome.with_notes(*notes) if notes else outcome


class LocalFallback:
    """Runs the request on ``fallback`` when ``primary`` (remote) failed to run it."""

    def __init__(self, primary: Executor, fallback: Executor) -> None:
        self.primary = primary
        self.fallback = fallback

    async def run(self, request: WorkRequest) -> Outcome:
        outcome = await self.primary.run(request)
        if not (isinstance(outcome, Failure) and outcome.kind is FailureKind.REMOTE_FAILED):
            return outcome
        LOGGER.info("remote execution failed; running the request locally")
        local = await self.fallback.run(request)
        return local.with_notes(
            note(f"remote execution failed ({outcome.short}); ran locally instead")
        )


class LocalSlots:
    """The local side of routing `auto`, counting the requests it runs (or that wait for
    a backend) per ``capacity(request)``'s key, against that capacity (None: any
    number). Every local run of the routing goes through the one LocalSlots: `auto`'s
    own and `fallback_local`'s after a failed remote run. (Asking the pool whether a
    slot was free missed the requests sent to it that had not reached it yet, still
    reading their inputs' digests: a burst of requests all went local, to wait there.)"""

    def __init__(
        self, inner: Executor, capacity: Callable[[WorkRequest], tuple[Hashable, int | None]]
    ) -> None:
        self.inner = inner
        self.capacity = capacity
        self._running: collections.Counter[Hashable] = collections.Counter()

    def full(self, request: WorkRequest) -> bool:
        key, capacity = self.capacity(request)
        return capacity is not None and self._running[key] >= capacity

    async def run(self, request: WorkRequest) -> Outcome:
        key, _ = self.capacity(request)
        self._running[key] += 1
        try:
            return await self.inner.run(request)
        finally:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]


class Auto:
    """Routing `auto`: local while the request's key has a free local slot (counted by
    ``local``), else remote. A request without an envelope cannot go remote and always
    runs locally."""

    def __init__(self, local: LocalSlots, remote: Executor) -> None:
        self.local = local
        self.remote = remote

    async def run(self, request: WorkRequest) -> Outcome:
        if request.envelope and self.local.full(request):
            return await self.remote.run(request)
        return await self.local.run(request)
