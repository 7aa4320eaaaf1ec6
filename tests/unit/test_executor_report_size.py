"""What an executor reports always fits what the server takes in one message. An update
carries every lease that completed since the last, and a server takes 4 MiB by default:
one over that was refused, sent again and refused again, for good, with every later
report stuck behind it (an error quoting a 5 MB working directory did it, or a result of
60,000 output files). Against a Bots stand-in on a Unix socket that takes 512 KiB."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.in_process_executor import in_process_executor
from tests.unit.test_executor_last_report import session_with_leases
from worker_runtime.executor import bots
from worker_runtime.executor.runner import ActionError
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.proto.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
)

#: The leases handed out, each named for what its action does.
LEASES = ("long-message", "many-outputs", "over-the-server", "small")
SERVER_LIMIT = 512 << 10


class ReportsStandIn(bots_pb2_grpc.BotsServicer):
    """Hands out one lease per LEASES at once and keeps each completion it takes."""

    def __init__(self) -> None:
        self.completed: dict[str, bots_pb2.Lease] = {}
        self._lock = threading.Lock()

    def CreateBotSession(
        self, request: bots_pb2.CreateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        actions = {name: re_pb2.Action(command_digest=re_pb2.Digest(hash=name)) for name in LEASES}
        return session_with_leases(request, actions)

    def UpdateBotSession(
        self, request: bots_pb2.UpdateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        answer = bots_pb2.BotSession()
        answer.CopyFrom(request.bot_session)
        del answer.leases[:]
        for lease in request.bot_session.leases:
            if lease.state == bots_pb2.COMPLETED:
                with self._lock:
                    self.completed[lease.id] = lease
            else:
                answer.leases.append(lease)
        return answer


def run(
    runner: object, action: re_pb2.Action, instance: str, cancelled: threading.Event
) -> bots.ActionOutcome:
    kind = action.command_digest.hash
    result = re_pb2.ActionResult()
    if kind == "long-message":
        raise ActionError(f"its working directory {'w' * 5_000_000!r} is not allowed")
    if kind == "many-outputs":
        for n in range(60_000):
            result.output_files.add(path=f"out/f{n}.class", digest=re_pb2.Digest(size_bytes=1))
    if kind == "over-the-server":
        result.stdout_raw = b"x" * (700 << 10)  # under the executor's own bound
    if kind == "small":
        result.stdout_raw = b"done"
    return bots.ActionOutcome(result=result, mode="oneshot", reused=False, worker_pid=0)


def report_all(
    stand_in: ReportsStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    receive_limit: int | None,
) -> None:
    """Serves ``stand_in`` (taking messages of up to ``receive_limit`` bytes; None: gRPC's
    default) to an executor that runs every lease, until each is reported or 60 s pass."""
    options = [] if receive_limit is None else [("grpc.max_receive_message_length", receive_limit)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    bots_pb2_grpc.add_BotsServicer_to_server(stand_in, server)
    server.add_insecure_port(f"unix://{tmp_path}/bots.sock")
    server.start()
    try:
        with in_process_executor(
            monkeypatch, run, f"unix://{tmp_path}/bots.sock", tmp_path / "executor",
            capacity=len(LEASES),
        ) as running:  # fmt: skip
            deadline = time.monotonic() + 60
            while len(stand_in.completed) < len(LEASES) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert running.loop.is_alive()
            assert running.stop_and_wait(30) == 0
    finally:
        server.stop(grace=None)
    assert set(stand_in.completed) == set(LEASES), "a report never got through"


def test_every_report_reaches_a_server_whatever_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in = ReportsStandIn()
    report_all(stand_in, tmp_path, monkeypatch, SERVER_LIMIT)
    long_message = stand_in.completed["long-message"].status
    assert long_message.code == 3  # INVALID_ARGUMENT: the action's own fault
    assert len(long_message.message) < bots.MAX_STATUS_MESSAGE_CHARS + 100
    assert long_message.message.endswith(" more characters)")
    many = stand_in.completed["many-outputs"]
    assert many.status.code == bots.RESOURCE_EXHAUSTED and not many.HasField("result")
    assert "60,000 output files" in many.status.message
    assert "declare a directory among its outputs" in many.status.message
    over = stand_in.completed["over-the-server"]
    assert over.status.code == bots.RESOURCE_EXHAUSTED and not over.HasField("result")
    assert "the server refused the report of this action" in over.status.message
    small = stand_in.completed["small"]
    result = re_pb2.ActionResult()
    assert small.status.code == 0 and small.result.Unpack(result)
    assert result.stdout_raw == b"done"


class BusyStandIn(ReportsStandIn):
    """Refuses the first updates that report completions as RESOURCE_EXHAUSTED for
    another reason than their size (a concurrency limit, a quota)."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    def UpdateBotSession(
        self, request: bots_pb2.UpdateBotSessionRequest, context: grpc.ServicerContext
    ) -> bots_pb2.BotSession:
        if self.refusals and any(
            lease.state == bots_pb2.COMPLETED for lease in request.bot_session.leases
        ):
            self.refusals -= 1
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded")
        return super().UpdateBotSession(request, context)


def test_a_server_busy_for_a_moment_costs_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a refusal for size sheds a report: RESOURCE_EXHAUSTED for a concurrency limit
    or a quota passes, and the update is sent again as it was."""
    stand_in = BusyStandIn(refusals=2)
    report_all(stand_in, tmp_path, monkeypatch, None)
    over = stand_in.completed["over-the-server"]  # no limit here: its result goes through
    assert over.status.code == 0 and over.HasField("result")
