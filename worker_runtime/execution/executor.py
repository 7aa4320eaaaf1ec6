"""The one interface every way of running a request implements, and the referee that the
two sides of a race share."""

from __future__ import annotations

from typing import Protocol

from worker_runtime.execution.outcome import Outcome, WorkRequest


class Executor(Protocol):
    """Runs one request to its outcome. Cancelling the caller cancels the work: a local
    backend is stopped (or asked to cancel), a remote operation is cancelled on the server."""

    async def run(self, request: WorkRequest) -> Outcome: ...


class Referee(Protocol):
    """What a race gives its remote side. Called on the event loop."""

    def cache_answered(self, hit: bool) -> None:
        """The action cache's answer. A hit: the remote side downloads its outputs, and
        the local side does not start for it. A miss (or a hit whose outputs were evicted
        since): the local side should start now."""

    async def claim_for_remote(self) -> bool:
        """The remote side's outputs are staged: True once the local side is stopped (the
        remote side then writes them), False if the local side already won (discard them)."""
        ...


class RacingExecutor(Executor, Protocol):
    """An executor that can be the remote side of a race."""

    async def run_racing(self, request: WorkRequest, referee: Referee) -> Outcome: ...
