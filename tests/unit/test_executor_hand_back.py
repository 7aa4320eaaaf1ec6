"""A stopping executor hands back the leases it did not finish (stopped past its grace,
or assigned as it drained and never started) as COMPLETED with UNAVAILABLE, which
BuildGrid runs again at once on another bot. Marked PENDING, as they were, BuildGrid
ignored them (and BOT_TERMINATING too) until the bot's keepalive lapsed: 600 s by its
default. Against a Bots stand-in on a Unix socket."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from tests.in_process_executor import in_process_executor, oneshot_outcome
from tests.unit.test_executor_last_report import served, session_with_leases
from worker_runtime.executor import bots
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
)
from worker_runtime.proto.google.rpc import error_details_pb2


class HandsOutLeases(bots_pb2_grpc.BotsServicer):
    """Hands out lease-1 at once and, with ``late``, lease-2 in the first answer to a
    draining (UNHEALTHY) bot, as a server that assigned it just before it read the
    status; echoes every update, a completed lease dropped from the answer."""

    def __init__(self, late: bool) -> None:
        self.late = late
        self.updates: list[bots_pb2.BotSession] = []
        self._lock = threading.Lock()

    def CreateBotSession(
        self, request: bots_pb2.CreateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        return session_with_leases(request, {"lease-1": re_pb2.Action()})

    def UpdateBotSession(
        self, request: bots_pb2.UpdateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        session = request.bot_session
        answer = bots_pb2.BotSession()
        answer.CopyFrom(session)
        del answer.leases[:]
        answer.leases.extend(lease for lease in session.leases if lease.state != bots_pb2.COMPLETED)
        with self._lock:
            self.updates.append(session)
            if self.late and session.status == bots_pb2.UNHEALTHY:
                self.late = False
                answer.leases.add(id="lease-2", state=bots_pb2.ACTIVE).payload.Pack(re_pb2.Action())
        return answer


def last_report(stand_in: HandsOutLeases) -> dict[str, bots_pb2.Lease]:
    final = stand_in.updates[-1]
    assert final.status == bots_pb2.BOT_TERMINATING
    return {lease.id: lease for lease in final.leases}


def test_a_lease_stopped_past_the_grace_is_handed_back_to_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()

    def runs_until_stopped(
        runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
    ) -> bots.ActionOutcome:
        started.set()
        assert cancelled.wait(60), "never stopped"
        raise bots.ActionCancelled("cancelled while running")

    stand_in = HandsOutLeases(late=False)
    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(
            monkeypatch, runs_until_stopped, address, tmp_path / "executor", shutdown_grace_s=0.3
        ) as running,
    ):  # fmt: skip
        assert started.wait(30), "the executor never started the lease"
        assert running.stop_and_wait(30) == 0
    lease = last_report(stand_in)["lease-1"]
    assert lease.state == bots_pb2.COMPLETED and lease.status.code == bots.UNAVAILABLE
    assert "stopped before the action finished" in lease.status.message


def test_a_lease_assigned_while_draining_is_handed_back_unstarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, finish = threading.Event(), threading.Event()
    ran: list[str] = []

    def runs_until_told(
        runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
    ) -> bots.ActionOutcome:
        ran.append("x")
        started.set()
        assert finish.wait(60), "never let finish"
        return oneshot_outcome(0, b"done")

    stand_in = HandsOutLeases(late=True)
    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(
            monkeypatch, runs_until_told, address, tmp_path / "executor", capacity=2
        ) as running,
    ):  # fmt: skip
        assert started.wait(30), "the executor never started the lease"
        running.executor.stop()
        while stand_in.late:  # the late lease reaches the draining bot
            threading.Event().wait(0.05)
        finish.set()
        assert running.stop_and_wait(30) == 0
    assert ran == ["x"], "a lease assigned while draining was started"
    late = last_report(stand_in)["lease-2"]
    assert late.state == bots_pb2.COMPLETED and late.status.code == bots.UNAVAILABLE


class AssignsAgain(HandsOutLeases):
    """Answers the first report of lease-1 by assigning lease-1 again: BuildGrid retrying
    a job reported UNAVAILABLE or INTERNAL and fetching it for the same bot at once
    (its lease id is the job's name)."""

    def __init__(self) -> None:
        super().__init__(late=False)
        self.assigned_again = False

    def UpdateBotSession(
        self, request: bots_pb2.UpdateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        answer = super().UpdateBotSession(request, context)
        completed = any(lease.state == bots_pb2.COMPLETED for lease in request.bot_session.leases)
        if completed and not self.assigned_again:
            self.assigned_again = True
            answer.leases.add(id="lease-1", state=bots_pb2.ACTIVE).payload.Pack(re_pb2.Action())
        return answer


def test_a_lease_assigned_again_after_a_retryable_report_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was remembered as finished and never started: the job sat assigned to this bot
    (its heartbeats kept it so) and the loop sent updates back to back."""
    runs: list[int] = []
    second = threading.Event()

    def fails_then_works(
        runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
    ) -> bots.ActionOutcome:
        runs.append(1)
        if len(runs) == 1:
            raise bots.ActionNotRun("the worker crashed", 13)
        second.set()
        return oneshot_outcome(0, b"second try")

    stand_in = AssignsAgain()
    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(
            monkeypatch, fails_then_works, address, tmp_path / "executor"
        ) as running,
    ):
        assert second.wait(30), "the lease assigned again never ran"
        assert running.stop_and_wait(30) == 0
    reports = [
        lease for update in stand_in.updates for lease in update.leases
        if lease.id == "lease-1" and lease.state == bots_pb2.COMPLETED
    ]  # fmt: skip
    assert [lease.status.code for lease in reports[:2]] == [13, 0], reports


def test_a_lease_missing_many_blobs_names_a_bounded_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost CAS: tens of thousands of an action's blobs missing, all named in its
    report, and three such reports passed the server's 4 MiB: shed as
    RESOURCE_EXHAUSTED, which no client retries and which names no blob to upload."""
    missing = tuple(re_pb2.Digest(hash=f"{i:064x}", size_bytes=i) for i in range(15_000))
    ran = threading.Event()

    def lacks_blobs(
        runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
    ) -> bots.ActionOutcome:
        ran.set()
        raise bots.ActionNotRun("blobs missing", 9, missing)

    stand_in = HandsOutLeases(late=False)
    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(monkeypatch, lacks_blobs, address, tmp_path / "executor") as running,
    ):
        assert ran.wait(30)
        while not any(
            lease.state == bots_pb2.COMPLETED for u in stand_in.updates for lease in u.leases
        ):
            threading.Event().wait(0.05)
        assert running.stop_and_wait(30) == 0
    (report,) = [
        lease for u in stand_in.updates for lease in u.leases if lease.state == bots_pb2.COMPLETED
    ]
    assert report.status.code == 9
    assert "15000 blobs missing, the first 1000 named" in report.status.message
    failure = error_details_pb2.PreconditionFailure()
    assert report.status.details[0].Unpack(failure)
    assert len(failure.violations) == bots.MAX_MISSING_NAMED
    assert failure.violations[0].subject == f"blobs/{0:064x}/0"


def test_a_lease_assigned_again_as_the_executor_stops_is_handed_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reported INTERNAL, assigned again under the same id as SIGTERM came: the bot,
    draining, did not start it, and its last update skipped it as finished here."""
    holder: list[bots.Executor] = []
    known, ran = threading.Event(), threading.Event()

    def fails_as_sigterm_comes(
        runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
    ) -> bots.ActionOutcome:
        assert known.wait(30)
        holder[0].stop()  # SIGTERM as the worker crashes
        ran.set()
        raise bots.ActionNotRun("the worker crashed", 13)

    stand_in = AssignsAgain()
    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(
            monkeypatch, fails_as_sigterm_comes, address, tmp_path / "executor"
        ) as running,
    ):  # fmt: skip
        holder.append(running.executor)
        known.set()
        assert ran.wait(30), "the executor never ran the lease"
        assert running.stop_and_wait(30) == 0
    assert stand_in.assigned_again, [
        (u.status, [(lease.id, lease.state, lease.status.code) for lease in u.leases])
        for u in stand_in.updates
    ]
    again = last_report(stand_in)["lease-1"]
    assert again.state == bots_pb2.COMPLETED and again.status.code == bots.UNAVAILABLE


class SlowToUpdate(HandsOutLeases):
    """Hands out two leases at once; answers every update only after 0.8 s and, like
    BuildGrid, rolls back (keeps no record of) an update its client gave up on."""

    def CreateBotSession(
        self, request: bots_pb2.CreateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        actions = {"lease-1": re_pb2.Action(), "lease-2": re_pb2.Action()}
        return session_with_leases(request, actions)

    def UpdateBotSession(
        self, request: bots_pb2.UpdateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        time.sleep(0.8)
        if not context.is_active():
            context.abort(grpc.StatusCode.CANCELLED, "rolled back: the client gave up")
        return super().UpdateBotSession(request, context)


def test_a_server_slower_than_the_short_deadline_still_gets_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Updates while work ran had 0.5 s: a server answering in 0.8 s (a loaded database)
    rolled every one back, so a completion never landed (here the first lease's, while
    the second runs on) and the heartbeat lapsed. The deadline doubles after an update
    it cut short."""
    calls: list[int] = []
    release = threading.Event()

    def one_quick_one_long(
        runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
    ) -> bots.ActionOutcome:
        calls.append(1)
        if len(calls) == 2:  # the other runs until the test ends
            while not (release.wait(0.05) or cancelled.is_set()):
                pass
        return oneshot_outcome(0, b"done")

    stand_in = SlowToUpdate(late=False)

    def reported() -> bool:
        return any(
            lease.state == bots_pb2.COMPLETED for u in stand_in.updates for lease in u.leases
        )

    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(
            monkeypatch, one_quick_one_long, address, tmp_path / "executor", capacity=2
        ) as running,
    ):  # fmt: skip
        waited = 0
        while not reported() and waited < 200:
            threading.Event().wait(0.1)
            waited += 1
        release.set()
        assert reported(), "no update carrying the completion was ever taken"
        assert running.stop_and_wait(30) == 0
