"""Routing `race`: one request run locally and remotely at once, the first real result
answering it, and the loser stopped on its own side without touching the winner's outputs.

- The remote side first looks the action up in the action cache. A hit answers the
  request and the local side does not start while the hit's outputs download, for up to
  ``hit_wait_s`` (a lost race kills a singleplex backend, so a warm one is not spent on a
  cached action). On a miss (a hit whose outputs were evicted since included), if the
  lookup takes longer than ``cache_wait_s``, or if the download takes longer than
  ``hit_wait_s``, the local side starts.
- A failure on one side (an unreachable server, a crashed backend, a refused action) is
  not a result: the other side's outcome is awaited. A bad request, or an internal fault,
  on either side fails the race, and the other side is stopped.
- The local backend writes its outputs in place. The remote side stages its outputs
  beside their destinations and then claims the win (``Referee.claim_for_remote``): the
  local side is stopped first (a singleplex backend killed and reaped, a cancellable
  multiplex one answers its cancel), and only then are the outputs renamed into place. A
  local winner cancels the remote side, which deletes what it staged.
- A race that is itself cancelled (a timeout, the runtime aborting) gives the win to
  nobody, unless the remote side already claimed it (its outputs may then land after
  the answer): the local side is stopped and awaited until clean, and a remote side that
  claims later is told to discard its outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from worker_runtime.execution.executor import Executor, RacingExecutor
from worker_runtime.execution.outcome import FailureKind, Outcome, Result, WorkRequest, note

LOGGER = logging.getLogger(__name__)

#: How long the local side waits for the remote side's cache lookup before it starts.
CACHE_WAIT_S = 0.25
#: How long, after a cache hit, the local side waits for the hit's outputs to download
#: before it starts too (a hung or very slow CAS must not leave the race without it).
HIT_WAIT_S = 10.0


class Race:
    """Both sides at once; a request without an envelope cannot go remote and runs locally."""

    def __init__(
        self,
        local: Executor,
        remote: RacingExecutor,
        cache_wait_s: float = CACHE_WAIT_S,
        hit_wait_s: float = HIT_WAIT_S,
    ) -> None:
        self.local = local
        self.remote = remote
        self.cache_wait_s = cache_wait_s
        self.hit_wait_s = hit_wait_s

    async def run(self, request: WorkRequest) -> Outcome:
        if not request.envelope:
            return await self.local.run(request)
        return await _OneRace(self, request).run()


def _ends_the_race(outcome: Outcome) -> bool:
    """A result, or a bad request (which the other side would fail too)."""
    return isinstance(outcome, Result) or outcome.kind is FailureKind.BAD_REQUEST


class _OneRace:
    """The referee of one race (its methods run on the event loop, so no lock is needed)."""

    def __init__(self, race: Race, request: WorkRequest) -> None:
        self.race = race
        self.request = request
        self.winner = ""
        self.local: asyncio.Future[Outcome] | None = None
        self._missed = asyncio.Event()
        self._hit = False
        self.remote: asyncio.Future[Outcome] = asyncio.ensure_future(
            race.remote.run_racing(request, self)
        )

    def _claim(self, side: str) -> bool:
        if not self.winner:
            self.winner = side
        return self.winner == side

    def cache_answered(self, hit: bool) -> None:
        if hit:
            self._hit = True
        else:
            self._missed.set()

    async def claim_for_remote(self) -> bool:
        if not self._claim("remote"):
            return False
        await self._stop_local()
        return True

    def _start_local(self) -> asyncio.Future[Outcome]:
        if self.local is None:
            self.local = asyncio.ensure_future(self.race.local.run(self.request))
        return self.local

    async def _stop_local(self) -> None:
        """Cancels the local side and returns once its backend no longer works on it."""
        if self.local is not None and not self.local.done():
            self.local.cancel()
            await asyncio.wait([self.local])

    async def run(self) -> Outcome:
        try:
            return await self._run()
        except BaseException:  # cancelled: a timeout, an abort
            self._claim("nobody")  # neither side writes from now on
            self.remote.cancel()
            if self.local is not None:
                self.local.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([self.local])
            raise

    async def _run(self) -> Outcome:
        missed = asyncio.ensure_future(self._missed.wait())
        first: list[asyncio.Future[Any]] = [self.remote, missed]
        try:
            await asyncio.wait(
                first, timeout=self.race.cache_wait_s, return_when=asyncio.FIRST_COMPLETED
            )
            if self._hit and not self._missed.is_set() and not self.remote.done():
                # A hit whose outputs are still downloading (large ones, a distant CAS):
                # the local side starts if they turn out evicted (a miss after all), or
                # if they take longer than hit_wait_s.
                await asyncio.wait(
                    first, timeout=self.race.hit_wait_s, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            missed.cancel()
        # Not once the remote side has claimed the win: it is putting its outputs in place
        # (a cache hit's download can outlast the wait), and a local start would write
        # over them after the answer.
        if not self.remote.done() and not self.winner:
            local = self._start_local()
            both: list[asyncio.Future[Any]] = [local, self.remote]
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if (
                local.done()
                and not local.cancelled()  # by the remote side, which won
                and (local.exception() is not None or _ends_the_race(local.result()))
                and self._claim("local")
            ):
                if local.exception() is None and isinstance(local.result(), Result):
                    LOGGER.info("race: the local side won; cancelling the remote side")
                else:  # a bad request, an internal fault: no side would do better
                    LOGGER.warning(
                        "race: the local side failed as no side would do better; "
                        "cancelling the remote side"
                    )
                self.remote.cancel()
                return local.result()
        outcome = await self.remote
        if isinstance(outcome, Result):
            LOGGER.info("race: the remote side won")
            return outcome
        if outcome.kind is FailureKind.BAD_REQUEST:
            await self._stop_local()
            return outcome
        LOGGER.warning(
            "race: the remote side failed (%s); waiting for the local side", outcome.short
        )
        if self.local is not None and self.winner == "remote":
            # Stopped by a remote claim that then failed to write (its thread gave up
            # waiting for the claim): once it is stopped, a fresh local run.
            await asyncio.wait([self.local])
            if self.local.cancelled():
                self.local = None
        local_outcome = await self._start_local()
        return local_outcome.with_notes(
            note(f"the remote side of the race failed: {outcome.short}")
        )
