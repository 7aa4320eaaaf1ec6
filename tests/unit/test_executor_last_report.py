"""A stopping executor's last report (its finished leases, with the bot still OK) reaches
a server that was out of reach for a moment: tried once more, not given up on, since
a completion that never reaches BuildGrid leaves the lease with the bot until its
keepalive lapses, and the action runs again. Against a Bots stand-in on
a Unix socket that refuses that one update as UNAVAILABLE, first once, then always."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.in_process_executor import in_process_executor, runs_until
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
)

LEASE = "lease-1"


def session_with_leases(
    request: bots_pb2.CreateBotSessionRequest, actions: dict[str, re_pb2.Action]
) -> bots_pb2.BotSession:
    """The new session a stand-in answers CreateBotSession with: one ACTIVE lease per
    action, under its id."""
    session = bots_pb2.BotSession()
    session.CopyFrom(request.bot_session)
    session.name = "sessions/stand-in"
    for lease_id, action in actions.items():
        session.leases.add(id=lease_id, state=bots_pb2.ACTIVE).payload.Pack(action)
    return session


class BotsStandIn(bots_pb2_grpc.BotsServicer):
    """Hands out one lease, echoes every update, and answers the first ``refusals``
    updates that report it COMPLETED before the bot terminates as UNAVAILABLE."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.updates: list[bots_pb2.BotSession] = []
        self._lock = threading.Lock()

    def CreateBotSession(
        self, request: bots_pb2.CreateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        return session_with_leases(request, {LEASE: re_pb2.Action()})

    def UpdateBotSession(
        self, request: bots_pb2.UpdateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        session = request.bot_session
        reports = session.status != bots_pb2.BOT_TERMINATING and any(
            lease.state == bots_pb2.COMPLETED for lease in session.leases
        )
        with self._lock:
            if reports and self.refusals > 0:
                self.refusals -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "a moment out of reach")
            self.updates.append(session)
        answer = bots_pb2.BotSession()
        answer.CopyFrom(session)
        del answer.leases[:]  # a reported lease is gone from the session
        answer.leases.extend(lease for lease in session.leases if lease.state != bots_pb2.COMPLETED)
        return answer


@contextlib.contextmanager
def served(stand_in: bots_pb2_grpc.BotsServicer, directory: Path) -> Iterator[str]:
    """``stand_in`` served on a Unix socket in ``directory``: its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    bots_pb2_grpc.add_BotsServicer_to_server(stand_in, server)
    address = f"unix://{directory}/bots.sock"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("refusals", [1, 2])
def test_the_last_report_is_tried_once_more_when_the_server_is_out_of_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusals: int
) -> None:
    stand_in = BotsStandIn(refusals)
    started, finish = threading.Event(), threading.Event()

    runs_until_told = runs_until(started, finish, 0, b"done")
    with (
        served(stand_in, tmp_path) as address,
        in_process_executor(
            monkeypatch, runs_until_told, address, tmp_path / "executor"
        ) as running,
    ):
        assert started.wait(30), "the executor never started the lease"
        running.executor.stop()  # SIGTERM: what runs is finished and reported, then the bot ends
        finish.set()
        assert running.stop_and_wait(30) == 0
    reported = [
        update
        for update in stand_in.updates
        if update.status != bots_pb2.BOT_TERMINATING
        and any(lease.id == LEASE and lease.state == bots_pb2.COMPLETED for lease in update.leases)
    ]
    # Refused once: the second try got there. Refused twice: given up, as before.
    assert len(reported) == (1 if refusals == 1 else 0)
    if reported:
        (lease,) = reported[0].leases
        result = re_pb2.ActionResult()
        assert lease.result.Unpack(result) and result.stdout_raw == b"done"
    assert stand_in.updates[-1].status == bots_pb2.BOT_TERMINATING
