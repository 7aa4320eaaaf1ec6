"""The execution seam against fake executors, in milliseconds: every policy wrapper and
every way a race can go (either side winning, cache hits, failures, cancels, timeouts)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from worker_runtime.execution.executor import Referee
from worker_runtime.execution.outcome import Failure, FailureKind, Outcome, Result, WorkRequest
from worker_runtime.execution.policies import Auto, LocalFallback, LocalSlots, Retry, Timeout
from worker_runtime.execution.race import Race

REQUEST = WorkRequest(("compile", "A.java"), envelope="/tmp/envelope.json")
OK = Result(0, "local output")
REMOTE_OK = Result(0, "remote output")


def run(coroutine: Coroutine[Any, Any, Outcome]) -> Outcome:
    return asyncio.run(coroutine)


@dataclass
class FakeExecutor:
    """Answers each run with the next scripted outcome after ``delay`` seconds."""

    outcomes: list[Outcome]
    delay: float = 0.0
    seen: list[WorkRequest] = field(default_factory=list)
    cancelled: int = 0

    async def run(self, request: WorkRequest) -> Outcome:
        self.seen.append(request)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.outcomes[min(len(self.seen), len(self.outcomes)) - 1]


@dataclass
class FakeRemote:
    """A remote side: optionally reports a cache miss, then after ``delay`` either fails
    or claims the win before 'writing' its result, as the REAPI client does."""

    outcome: Outcome
    delay: float = 0.0
    miss_after: float | None = None
    #: A cache hit whose outputs take this long to download before it claims the win.
    hit_download_s: float | None = None
    #: ...and then turn out evicted: a miss after all, and the action runs.
    evicted: bool = False
    #: How long it takes to put its outputs in place once it has claimed the win.
    write_s: float = 0.0
    cancelled: int = 0
    claims: list[bool] = field(default_factory=list)

    async def run(self, request: WorkRequest) -> Outcome:
        raise AssertionError("a race calls run_racing")

    async def run_racing(self, request: WorkRequest, referee: Referee) -> Outcome:
        try:
            if self.hit_download_s is not None:
                referee.cache_answered(True)
                await asyncio.sleep(self.hit_download_s)
                if self.evicted:
                    referee.cache_answered(False)
            if self.miss_after is not None:
                await asyncio.sleep(self.miss_after)
                referee.cache_answered(False)
            await asyncio.sleep(self.delay)
            if isinstance(self.outcome, Result):
                won = await referee.claim_for_remote()
                self.claims.append(won)
                if not won:
                    await asyncio.sleep(3600)  # the race cancels a loser
                await asyncio.sleep(self.write_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.outcome


def backend_failed(n: int = 1) -> Failure:
    return Failure(FailureKind.BACKEND_FAILED, f"backend died ({n})", f"backend died ({n})")


# -- Timeout ------------------------------------------------------------------------------


def test_timeout_passes_an_outcome_that_is_in_time() -> None:
    inner = FakeExecutor([OK])
    assert run(Timeout(inner).run(WorkRequest(("x",), timeout_s=5))) == OK


def test_timeout_cancels_the_inner_run_and_says_so() -> None:
    inner = FakeExecutor([OK], delay=1.5)
    outcome = run(Timeout(inner).run(WorkRequest(("x",), timeout_s=1)))
    assert isinstance(outcome, Failure)
    assert outcome.kind is FailureKind.TIMED_OUT
    assert outcome.timed_out_after_s == 1
    assert "ran past its timeout of 1 s" in outcome.message
    assert inner.cancelled == 1


def test_no_timeout_when_the_request_has_none() -> None:
    assert run(Timeout(FakeExecutor([OK], delay=0.01)).run(WorkRequest(("x",)))) == OK


# -- Retry --------------------------------------------------------------------------------


def test_retry_runs_again_on_a_fresh_backend_and_notes_it() -> None:
    inner = FakeExecutor([backend_failed(), OK])
    outcome = run(Retry(inner, retries=1).run(REQUEST))
    assert isinstance(outcome, Result)
    assert outcome.output == "local output"
    assert outcome.notes == (
        "worker-runtime: note: backend died (1); the request was retried on a fresh backend "
        "process (retry 1 of 1).\n",
    )
    assert [r.attempt for r in inner.seen] == [0, 1]


def test_retry_gives_up_after_its_retries_and_says_how_many() -> None:
    inner = FakeExecutor([backend_failed(1), backend_failed(2), backend_failed(3)])
    outcome = run(Retry(inner, retries=2).run(REQUEST))
    assert isinstance(outcome, Failure)
    assert outcome.kind is FailureKind.BACKEND_FAILED
    assert outcome.message == (
        "backend died (3)\n  the request had been retried 2 time(s) on a fresh backend"
    )
    assert len(inner.seen) == 3


def test_retry_zero_means_one_try() -> None:
    inner = FakeExecutor([backend_failed()])
    outcome = run(Retry(inner, retries=0).run(REQUEST))
    assert isinstance(outcome, Failure)
    assert outcome.message == "backend died (1)"
    assert len(inner.seen) == 1


@pytest.mark.parametrize(
    "kind", [FailureKind.START_FAILED, FailureKind.BAD_REQUEST, FailureKind.TIMED_OUT]
)
def test_retry_does_not_retry_what_a_fresh_backend_would_not_fix(kind: FailureKind) -> None:
    inner = FakeExecutor([Failure(kind, "no"), OK])
    assert run(Retry(inner, retries=3).run(REQUEST)) == Failure(kind, "no")
    assert len(inner.seen) == 1


def test_a_compile_error_is_a_result_not_a_failure() -> None:
    inner = FakeExecutor([Result(1, "error: ';' expected")])
    assert run(Retry(inner, retries=3).run(REQUEST)) == Result(1, "error: ';' expected")


# -- LocalFallback ------------------------------------------------------------------------


def test_fallback_runs_locally_when_remote_failed() -> None:
    remote = FakeExecutor(
        [Failure(FailureKind.REMOTE_FAILED, "remote execution failed: down", "down")]
    )
    local = FakeExecutor([OK])
    outcome = run(LocalFallback(remote, local).run(REQUEST))
    assert isinstance(outcome, Result)
    assert outcome.notes == (
        "worker-runtime: note: remote execution failed (down); ran locally instead\n",
    )


def test_the_fallback_s_local_run_has_what_is_left_of_the_timeout_not_a_new_one() -> None:
    """The timeout counts from the request's arrival: a remote side that failed at 1 s
    of a 2 s timeout left the local run 1 s, not a whole new 2 s (two timeouts in all,
    where Buck2 was told one)."""
    remote = Timeout(FakeExecutor([Failure(FailureKind.REMOTE_FAILED, "x", "down")], delay=1))
    local = FakeExecutor([OK], delay=1.5)
    request = WorkRequest(("x",), envelope="/tmp/e.json", timeout_s=2, started=time.monotonic())
    outcome = run(LocalFallback(remote, Timeout(local)).run(request))
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.TIMED_OUT, outcome
    assert local.cancelled == 1


def test_a_timeout_already_spent_at_the_start_fails_at_once() -> None:
    inner = FakeExecutor([OK])
    request = WorkRequest(("x",), timeout_s=1, started=time.monotonic() - 2)
    outcome = run(Timeout(inner).run(request))
    assert isinstance(outcome, Failure) and outcome.kind is FailureKind.TIMED_OUT
    assert inner.seen == []


def test_fallback_notes_a_local_failure_too() -> None:
    remote = FakeExecutor([Failure(FailureKind.REMOTE_FAILED, "x", "down")])
    local = FakeExecutor([Failure(FailureKind.START_FAILED, "cannot start")])
    outcome = run(LocalFallback(remote, local).run(REQUEST))
    assert isinstance(outcome, Failure)
    assert outcome.kind is FailureKind.START_FAILED
    assert len(outcome.notes) == 1


@pytest.mark.parametrize(
    "outcome",
    [REMOTE_OK, Result(3, "compile error"), Failure(FailureKind.BAD_REQUEST, "no envelope")],
)
def test_fallback_leaves_results_and_bad_requests_alone(outcome: Outcome) -> None:
    local = FakeExecutor([OK])
    assert run(LocalFallback(FakeExecutor([outcome]), local).run(REQUEST)) == outcome
    assert local.seen == []


# -- Auto ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "envelope", "sides"),
    [
        (1, "e.json", ["local", "remote", "remote"]),
        (2, "e.json", ["local", "local", "remote"]),
        (1, "", ["local", "local", "local"]),  # no envelope: it cannot go remote
        (None, "e.json", ["local", "local", "local"]),  # multiplex: no limit
    ],
)
def test_auto_sends_a_burst_local_up_to_its_slots_and_the_rest_remote(
    capacity: int | None, envelope: str, sides: list[str]
) -> None:
    """Three requests at once: as many go local as the key has slots, counted as they
    are sent (a pool asked whether a slot was free said yes to all three, none having
    reached it yet), and the rest remote; once they end, the slots are free again."""
    local, remote = FakeExecutor([OK], delay=0.05), FakeExecutor([REMOTE_OK])
    auto = Auto(LocalSlots(local, lambda _: ("key", capacity)), remote)
    request = WorkRequest(("x",), envelope=envelope)

    async def burst() -> list[Outcome]:
        return list(await asyncio.gather(*(auto.run(request) for _ in range(3))))

    outcomes = asyncio.run(burst())
    assert [("local" if o == OK else "remote") for o in outcomes] == sides
    assert run(auto.run(request)) == OK  # the slots are free again


class Gated:
    """A local side whose every run waits until the test opens its gate."""

    def __init__(self) -> None:
        #: Each run's gate, as it starts.
        self.started: asyncio.Queue[asyncio.Event] = asyncio.Queue()

    async def run(self, request: WorkRequest) -> Outcome:
        gate = asyncio.Event()
        self.started.put_nowait(gate)
        await gate.wait()
        return OK


def test_auto_counts_the_local_runs_of_fallback_local_too() -> None:
    """With `fallback_local`, a request whose remote run failed runs locally: on the
    same slots. It was not counted, and the next request went local, to wait."""
    remote = FakeExecutor([Failure(FailureKind.REMOTE_FAILED, "x", "down"), REMOTE_OK])
    request = WorkRequest(("x",), envelope="e.json")

    async def scenario() -> Outcome:
        local = Gated()
        slots = LocalSlots(local, lambda _: ("key", 1))
        auto = Auto(slots, LocalFallback(remote, slots))
        first = asyncio.ensure_future(auto.run(request))  # local
        first_gate = await local.started.get()
        second = asyncio.ensure_future(auto.run(request))  # remote, fails, local
        second_gate = await local.started.get()
        first_gate.set()
        assert await first == OK
        third = await auto.run(request)  # the second still runs locally: remote
        second_gate.set()
        await second
        return third

    assert asyncio.run(scenario()) == REMOTE_OK


# -- Race ---------------------------------------------------------------------------------


def test_race_a_cache_hit_answers_before_the_local_side_starts() -> None:
    local, remote = FakeExecutor([OK]), FakeRemote(REMOTE_OK)
    assert run(Race(local, remote, cache_wait_s=5).run(REQUEST)) == REMOTE_OK
    assert local.seen == []


def test_race_a_cache_hit_whose_outputs_download_slowly_never_starts_the_local_side() -> None:
    """The hit's outputs took longer to download than the cache wait: the local side
    started then (a warm backend spent on a cached action), and was killed at the claim."""
    local, remote = FakeExecutor([OK]), FakeRemote(REMOTE_OK, hit_download_s=0.2)
    assert run(Race(local, remote, cache_wait_s=0.02).run(REQUEST)) == REMOTE_OK
    assert remote.claims == [True]
    assert local.seen == []


def test_race_a_cache_hit_whose_download_outlasts_the_hit_wait_starts_the_local_side() -> None:
    """A hung or very slow CAS after a hit: the race does not go without its local side."""
    local = FakeExecutor([OK], delay=0.01)
    remote = FakeRemote(REMOTE_OK, hit_download_s=5)
    race = Race(local, remote, cache_wait_s=0.02, hit_wait_s=0.05)
    assert run(race.run(REQUEST)) == OK
    assert remote.cancelled == 1


def test_race_a_cache_hit_whose_outputs_were_evicted_starts_the_local_side() -> None:
    local = FakeExecutor([OK], delay=0.01)
    remote = FakeRemote(REMOTE_OK, delay=5, hit_download_s=0.05, evicted=True)
    assert run(Race(local, remote, cache_wait_s=0.02).run(REQUEST)) == OK
    assert remote.cancelled == 1
    assert remote.claims == []


def test_race_local_starts_at_a_cache_miss_and_wins() -> None:
    local = FakeExecutor([OK], delay=0.01)
    remote = FakeRemote(REMOTE_OK, delay=5, miss_after=0.0)
    assert run(Race(local, remote, cache_wait_s=5).run(REQUEST)) == OK
    assert remote.cancelled == 1
    assert remote.claims == []


def test_race_local_starts_when_the_cache_lookup_is_slow() -> None:
    local = FakeExecutor([OK])
    remote = FakeRemote(REMOTE_OK, delay=5)
    assert run(Race(local, remote, cache_wait_s=0.01).run(REQUEST)) == OK
    assert remote.cancelled == 1


def test_race_remote_wins_and_stops_the_local_side_before_it_writes() -> None:
    local = FakeExecutor([OK], delay=5)
    remote = FakeRemote(REMOTE_OK, delay=0.02, miss_after=0.0)
    assert run(Race(local, remote, cache_wait_s=5).run(REQUEST)) == REMOTE_OK
    assert remote.claims == [True]
    assert local.cancelled == 1


def test_race_a_remote_side_that_claimed_the_win_is_not_joined_by_a_late_local_start() -> None:
    """A cache hit whose outputs take longer to put in place than the cache wait: the
    local side once started then, and wrote its outputs after the remote answer."""
    local = FakeExecutor([OK], delay=0.01)
    remote = FakeRemote(REMOTE_OK, write_s=0.2)
    assert run(Race(local, remote, cache_wait_s=0.02).run(REQUEST)) == REMOTE_OK
    assert remote.claims == [True]
    assert local.seen == []


def test_race_a_remote_claim_given_up_while_the_local_side_stops_runs_it_afresh() -> None:
    """The remote side's thread gave up waiting for its claim while the local side was
    still stopping (a backend slow to answer its cancel): the race awaited that same
    local run, which ended cancelled, and the request was answered as cancelled."""

    @dataclass
    class SlowToStop(FakeExecutor):
        async def run(self, request: WorkRequest) -> Outcome:
            if self.seen:  # the fresh run
                self.seen.append(request)
                return OK
            try:
                return await super().run(request)
            except asyncio.CancelledError:
                await asyncio.sleep(0.2)  # its backend answers the cancel late
                raise

    @dataclass
    class GivesUpOnItsClaim(FakeRemote):
        async def run_racing(self, request: WorkRequest, referee: Referee) -> Outcome:
            referee.cache_answered(False)
            await asyncio.sleep(0.05)
            claim = asyncio.ensure_future(referee.claim_for_remote())
            await asyncio.wait([claim], timeout=0.05)
            return Failure(FailureKind.REMOTE_FAILED, "claim given up", "claim given up")

    local = SlowToStop([OK], delay=5)
    remote = GivesUpOnItsClaim(REMOTE_OK)
    outcome = run(Race(local, remote, cache_wait_s=5).run(REQUEST))
    assert isinstance(outcome, Result) and outcome.output == "local output"
    assert len(local.seen) == 2


def test_race_a_local_bad_request_stops_the_remote_side() -> None:
    """A bad request is one no side would do better with (docs/remote.md): the race
    waited for the remote side, and answered with its result."""
    bad = Failure(FailureKind.BAD_REQUEST, "cannot read tool input tools/x.jar")
    local = FakeExecutor([bad])
    remote = FakeRemote(REMOTE_OK, delay=5, miss_after=0.0)
    assert run(Race(local, remote, cache_wait_s=5).run(REQUEST)) == bad
    assert remote.cancelled == 1


def test_race_a_local_internal_fault_stops_the_remote_side() -> None:
    @dataclass
    class Faulty(FakeExecutor):
        async def run(self, request: WorkRequest) -> Outcome:
            raise RuntimeError("a fault of the runtime's own")

    remote = FakeRemote(REMOTE_OK, delay=5, miss_after=0.0)
    with pytest.raises(RuntimeError, match="own"):
        run(Race(Faulty([OK]), remote, cache_wait_s=5).run(REQUEST))
    assert remote.cancelled == 1


def test_race_a_local_failure_is_not_a_result() -> None:
    local = FakeExecutor([Failure(FailureKind.START_FAILED, "cannot start")])
    remote = FakeRemote(REMOTE_OK, delay=0.05, miss_after=0.0)
    assert run(Race(local, remote, cache_wait_s=5).run(REQUEST)) == REMOTE_OK


def test_race_a_remote_failure_waits_for_the_local_side() -> None:
    local = FakeExecutor([OK], delay=0.05)
    remote = FakeRemote(Failure(FailureKind.REMOTE_FAILED, "x", "unreachable"), miss_after=0.0)
    outcome = run(Race(local, remote, cache_wait_s=5).run(REQUEST))
    assert isinstance(outcome, Result)
    assert outcome.output == "local output"
    assert outcome.notes == (
        "worker-runtime: note: the remote side of the race failed: unreachable\n",
    )


def test_race_both_sides_failing_answers_with_the_local_failure() -> None:
    local = FakeExecutor([Failure(FailureKind.START_FAILED, "cannot start")])
    remote = FakeRemote(Failure(FailureKind.REMOTE_FAILED, "x", "unreachable"), delay=0.05)
    outcome = run(Race(local, remote, cache_wait_s=0.01).run(REQUEST))
    assert isinstance(outcome, Failure)
    assert outcome.kind is FailureKind.START_FAILED


def test_race_a_bad_request_fails_the_race_and_stops_the_local_side() -> None:
    local = FakeExecutor([OK], delay=5)
    remote = FakeRemote(Failure(FailureKind.BAD_REQUEST, "missing input"), delay=0.05)
    outcome = run(Race(local, remote, cache_wait_s=0.01).run(REQUEST))
    assert outcome == Failure(FailureKind.BAD_REQUEST, "missing input")
    assert local.cancelled == 1


def test_race_timed_out_stops_both_sides_and_gives_the_win_to_nobody() -> None:
    local = FakeExecutor([OK], delay=5)
    remote = FakeRemote(REMOTE_OK, delay=5, miss_after=0.0)
    outcome = run(Timeout(Race(local, remote, cache_wait_s=5)).run(
        WorkRequest(("x",), envelope="e.json", timeout_s=1)
    ))  # fmt: skip
    assert isinstance(outcome, Failure)
    assert outcome.kind is FailureKind.TIMED_OUT
    assert (local.cancelled, remote.cancelled, remote.claims) == (1, 1, [])


def test_race_without_an_envelope_runs_locally_only() -> None:
    local, remote = FakeExecutor([OK]), FakeRemote(REMOTE_OK)
    assert run(Race(local, remote).run(WorkRequest(("x",)))) == OK


@pytest.mark.parametrize("how", ["local won", "timed out"])
def test_race_a_remote_thread_that_claims_late_must_discard_its_outputs(how: str) -> None:
    """The REAPI client runs on a thread that goes on after its task was cancelled; when
    it then claims the win, the referee says no, so it deletes what it staged."""

    async def scenario() -> bool:
        referees: list[Referee] = []

        class CapturingRemote(FakeRemote):
            async def run_racing(self, request: WorkRequest, referee: Referee) -> Outcome:
                referees.append(referee)
                return await super().run_racing(request, referee)

        local = FakeExecutor([OK], delay=0.0 if how == "local won" else 5)
        remote = CapturingRemote(REMOTE_OK, delay=5, miss_after=0.0)
        outcome = await Timeout(Race(local, remote, cache_wait_s=5)).run(
            WorkRequest(("x",), envelope="e.json", timeout_s=1)
        )
        assert (outcome == OK) == (how == "local won")
        return await referees[0].claim_for_remote()

    assert asyncio.run(scenario()) is False
