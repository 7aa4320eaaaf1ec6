"""An executor whose bot session the server has forgotten (BuildGrid reaps a bot silent
past its keepalive and gives its leases to others; every update of the old session is
then refused) stops what it ran for the lost leases and registers again with the same
bot id, trying again while the server is out of reach, and still stops promptly on
SIGTERM meanwhile. At start-up, a server out of reach is tried for a while, then the
executor fails with an error naming it. Against a Bots stand-in on a Unix socket."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from tests.in_process_executor import Run, in_process_executor, oneshot_outcome
from tests.unit.test_executor_last_report import served
from worker_runtime.executor import bots
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
)
from worker_runtime.remote.channels import parse_endpoint

#: The lease of the first session (lost with it) and the one of the session made again.
LOST, SECOND = "lease-lost", "lease-second"


class ForgetfulBots(bots_pb2_grpc.BotsServicer):
    """Hands out LOST with the first session and SECOND with the next. Once ``forget`` is
    set, every update of the first session is refused with ``refusal``, as a server that
    reaped the bot does. Once ``refusals_after`` sessions were created, the next
    ``create_refusals`` CreateBotSessions are answered UNAVAILABLE (out of reach)."""

    def __init__(
        self, refusal: grpc.StatusCode, create_refusals: int = 0, refusals_after: int = 1
    ) -> None:
        self.refusal = refusal
        self.create_refusals = create_refusals
        self.refusals_after = refusals_after
        self.forget = threading.Event()
        self.created: list[bots_pb2.CreateBotSessionRequest] = []
        self.updates: list[bots_pb2.BotSession] = []
        self._lock = threading.Lock()

    def CreateBotSession(
        self, request: bots_pb2.CreateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        with self._lock:
            if len(self.created) >= self.refusals_after and self.create_refusals > 0:
                self.create_refusals -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "out of reach for a moment")
            self.created.append(request)
            number = len(self.created)
        session = bots_pb2.BotSession()
        session.CopyFrom(request.bot_session)
        session.name = f"sessions/{number}"
        lease_id = LOST if number == 1 else SECOND
        lease = session.leases.add(id=lease_id, state=bots_pb2.PENDING)
        lease.payload.Pack(re_pb2.Action(salt=lease_id.encode()))
        return session

    def UpdateBotSession(
        self, request: bots_pb2.UpdateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        if self.forget.is_set() and request.name == "sessions/1":
            context.abort(self.refusal, "Bot does not exist while validating leases.")
        with self._lock:
            self.updates.append(request.bot_session)
        answer = bots_pb2.BotSession()
        answer.CopyFrom(request.bot_session)
        del answer.leases[:]  # a reported lease is gone from the session
        answer.leases.extend(
            lease for lease in request.bot_session.leases if lease.state != bots_pb2.COMPLETED
        )
        return answer

    def reported(self, lease_id: str) -> list[bots_pb2.Lease]:
        with self._lock:
            return [
                lease
                for update in self.updates
                for lease in update.leases
                if lease.id == lease_id and lease.state == bots_pb2.COMPLETED
            ]


class LeaseRuns:
    """Runs LOST until its lease is cancelled, and SECOND at once (its stdout b"second")."""

    def __init__(self) -> None:
        self.lost_started = threading.Event()
        self.lost_cancelled = threading.Event()

    def run(self) -> Run:
        """What stands in for ActionRunner.run (a function: a class attribute that is one
        is given the runner as its first argument)."""

        def run(
            runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
        ) -> bots.ActionOutcome:
            return self.outcome(action, cancelled)

        return run

    def outcome(self, action: re_pb2.Action, cancelled: threading.Event) -> bots.ActionOutcome:
        if action.salt == LOST.encode():
            self.lost_started.set()
            assert cancelled.wait(60), "the lost lease's action was never stopped"
            self.lost_cancelled.set()
            raise bots.ActionCancelled("stopped: its lease was lost")
        return oneshot_outcome(0, b"second")


def wait_until(condition: object, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("create_refusals", [0, 2])
@pytest.mark.parametrize("refusal", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND])
def test_a_forgotten_session_is_registered_again_and_its_lost_lease_stopped(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refusal: grpc.StatusCode,
    create_refusals: int,
) -> None:
    monkeypatch.setattr(bots, "REGISTER_RETRY_FIRST_S", 0.05)
    stand_in = ForgetfulBots(refusal, create_refusals)
    runs = LeaseRuns()
    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(monkeypatch, runs.run(), address, tmp_path / "executor") as running,
    ):
        assert runs.lost_started.wait(30), "the executor never started the first lease"
        stand_in.forget.set()  # the server reaps the bot: its session and leases are gone
        assert wait_until(lambda: stand_in.reported(SECOND)), "the executor never ran again"
        assert runs.lost_cancelled.is_set(), "the lost lease's action ran on"
        assert running.stop_and_wait(30) == 0
    first, again = stand_in.created
    assert again.bot_session.bot_id == first.bot_session.bot_id
    (lease,) = stand_in.reported(SECOND)
    result = re_pb2.ActionResult()
    assert lease.result.Unpack(result) and result.stdout_raw == b"second"
    assert not stand_in.reported(LOST), "a lost lease's result was reported"


def test_a_stop_while_registering_again_ends_the_executor_promptly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its waits between attempts to register again are far longer than the stop may take.
    monkeypatch.setattr(bots, "REGISTER_RETRY_FIRST_S", 3600.0)
    monkeypatch.setattr(bots, "REGISTER_RETRY_MAX_S", 3600.0)
    stand_in = ForgetfulBots(grpc.StatusCode.INVALID_ARGUMENT, create_refusals=1_000_000)
    runs = LeaseRuns()
    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(monkeypatch, runs.run(), address, tmp_path / "executor") as running,
    ):
        assert runs.lost_started.wait(30), "the executor never started the first lease"
        stand_in.forget.set()
        # Stopped as it registers again: it is now in an hour's wait between attempts.
        assert runs.lost_cancelled.wait(30), "the lost lease's action ran on"
        assert running.stop_and_wait(30) == 0, "the stop waited for the server"


def executor_of(server: str, workdir: Path) -> bots.Executor:
    return bots.Executor(
        bots.ExecutorSettings(
            server=parse_endpoint(server), instance="main",
            bot_id=f"start-{uuid.uuid4().hex}", capacity=1, workdir=workdir,
            max_workers=1, memory_limit_mb=None, worker_idle_s=60,
        )
    )  # fmt: skip


def test_a_server_out_of_reach_at_start_up_fails_with_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bots, "STARTUP_REGISTER_S", 1.0)
    monkeypatch.setattr(bots, "REGISTER_RETRY_FIRST_S", 0.1)
    address = f"unix://{tmp_path}/nobody-listens.sock"
    executor = executor_of(address, tmp_path / "executor")
    try:
        with pytest.raises(bots.RegistrationFailed) as failed:
            executor.serve()
    finally:
        executor.channel.close()
    retries = [r for r in caplog.records if "cannot register with the server" in r.getMessage()]
    assert len(retries) >= 2, "not tried again while the server was out of reach"
    message = str(failed.value)
    assert f"{tmp_path}/nobody-listens.sock" in message and "UNAVAILABLE" in message
    assert "start the executor again" in message and "\n" not in message


def test_a_server_that_comes_up_during_start_up_is_registered_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bots, "REGISTER_RETRY_FIRST_S", 0.1)
    # Its first two CreateBotSessions refused as out of reach: the server is starting.
    stand_in = ForgetfulBots(grpc.StatusCode.INVALID_ARGUMENT, 2, refusals_after=0)
    runs = LeaseRuns()
    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(
            monkeypatch, runs.run(), address, tmp_path / "executor", shutdown_grace_s=0.1
        ) as running,
    ):
        assert runs.lost_started.wait(30), "the executor never registered"
        assert running.stop_and_wait(30) == 0
    assert len(stand_in.created) == 1


class RefusesAfterOneUpdate(bots_pb2_grpc.BotsServicer):
    """Takes one update of each session, then refuses its others as unknown: what an
    executor sees when another one was started with the same bot id."""

    def __init__(self) -> None:
        self.created = 0
        self.refused = threading.Event()
        self._updated: set[str] = set()
        self._lock = threading.Lock()

    def CreateBotSession(
        self, request: bots_pb2.CreateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        with self._lock:
            self.created += 1
            session = bots_pb2.BotSession()
            session.CopyFrom(request.bot_session)
            session.name = f"sessions/{self.created}"
        return session

    def UpdateBotSession(
        self, request: bots_pb2.UpdateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        with self._lock:
            first = request.name not in self._updated
            self._updated.add(request.name)
        if not first:
            self.refused.set()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Bot does not exist.")
        return request.bot_session


def test_a_session_lost_soon_after_it_began_is_not_replaced_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lost within SETTLED_SESSION_S of its creation, a session is registered again only
    after a wait (here an hour): two executors sharing a bot id do not take the id from
    each other over and over, each time stopping the other's leases."""
    monkeypatch.setattr(bots, "REGISTER_RETRY_FIRST_S", 3600.0)
    stand_in = RefusesAfterOneUpdate()
    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(monkeypatch, LeaseRuns().run(), address, tmp_path / "ex") as running,
    ):
        assert stand_in.refused.wait(30), "the executor's session was never refused"
        time.sleep(1)  # room for a registration at once, which must not come
        assert stand_in.created == 1
        assert running.stop_and_wait(30) == 0
