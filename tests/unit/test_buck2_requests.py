"""The Buck2 adapter alone, against a fake executor: what it makes of an ExecuteCommand
and how each outcome reaches Buck2."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from worker_runtime.backends.manager import BackendManager
from worker_runtime.buck2.requests import RequestHandler
from worker_runtime.config import RuntimeConfig
from worker_runtime.envelope import ENVELOPE_ENV
from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE
from worker_runtime.execution.outcome import Failure, FailureKind, Outcome, Result, WorkRequest
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.protocol.argfiles import expand_argfiles


class Recording:
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.seen: list[WorkRequest] = []

    async def run(self, request: WorkRequest) -> Outcome:
        self.seen.append(request)
        return self.outcome


def handler(tmp_path: Path, outcome: Outcome, **config: object) -> tuple[RequestHandler, Recording]:
    settings = RuntimeConfig(command=("tool",), **config)  # type: ignore[arg-type]
    executor = Recording(outcome)
    manager = BackendManager(settings, str(tmp_path), tmp_path / "logs")
    return RequestHandler(manager, tmp_path / "logs", executor), executor


def command(
    *argv: bytes, env: dict[bytes, bytes] | None = None, timeout: int = 0
) -> pb.ExecuteCommand:
    message = pb.ExecuteCommand(
        argv=list(argv),
        env=[pb.ExecuteCommand.EnvironmentEntry(key=k, value=v) for k, v in (env or {}).items()],
    )
    if timeout:
        message.timeout_s = timeout
    return message


def test_a_result_is_passed_through_with_its_notes_first(tmp_path: Path) -> None:
    requests, _ = handler(tmp_path, Result(3, "error: x\n", ("worker-runtime: note: n\n",)))
    response = asyncio.run(requests.execute(command(b"a")))
    assert response.exit_code == 3
    assert response.stderr == "worker-runtime: note: n\nerror: x\n"


def test_a_failure_is_a_runtime_error_naming_the_log(tmp_path: Path) -> None:
    failure = Failure(FailureKind.TIMED_OUT, "too slow", notes=("n\n",), timed_out_after_s=4)
    requests, _ = handler(tmp_path, failure)
    response = asyncio.run(requests.execute(command(b"a")))
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert response.timed_out_after_s == 4
    assert response.stderr == (
        f"n\nworker-runtime: error: too slow\n  runtime log: {tmp_path / 'logs' / 'runtime.log'}\n"
    )


def test_the_work_request_carries_what_the_executors_need(tmp_path: Path) -> None:
    (tmp_path / "args.txt").write_text("-d\nout\n")
    requests, executor = handler(tmp_path, Result(0, ""), key_env=("JAVA_HOME",))
    env = {b"JAVA_HOME": b"/jdk", b"OTHER": b"x", ENVELOPE_ENV.encode(): b"e.json"}
    asyncio.run(requests.execute(command(b"javac", b"@args.txt", env=env, timeout=9)))
    assert executor.seen == [
        WorkRequest(("javac", "-d", "out"), (("JAVA_HOME", "/jdk"),), "e.json", 9)
    ]


def test_a_slow_argfile_read_leaves_the_timeout_as_buck2_gave_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read counts against the timeout (it runs from the request's arrival), but the
    timeout itself stays: it was cut to what was left, and as part of a remote action's
    digest that split the action cache by how long a read took."""
    from worker_runtime.buck2 import requests as requests_module

    (tmp_path / "args.txt").write_text("-d\nout\n")

    def slow_expand(arguments: list[str], cwd: str) -> list[str]:
        time.sleep(1.2)
        return expand_argfiles(arguments, cwd)

    monkeypatch.setattr(requests_module, "expand_argfiles", slow_expand)
    requests, executor = handler(tmp_path, Result(0, ""))
    argfile = f"@{tmp_path / 'args.txt'}"  # absolute: read off the event loop
    asyncio.run(requests.execute(command(b"javac", argfile.encode(), timeout=9)))
    (seen,) = executor.seen
    assert seen.arguments == ("javac", "-d", "out") and seen.timeout_s == 9
    assert time.monotonic() - seen.started >= 1.2


def test_without_a_timeout_the_default_applies(tmp_path: Path) -> None:
    requests, executor = handler(tmp_path, Result(0, ""), default_timeout_s=30.0)
    asyncio.run(requests.execute(command(b"a")))
    assert executor.seen[0].timeout_s == 30


def test_a_fractional_default_timeout_is_rounded_up_not_to_none(tmp_path: Path) -> None:
    """Buck2's timeout is whole seconds, 0 meaning none: 0.5 s must be 1, not 0."""
    requests, executor = handler(tmp_path, Result(0, ""), default_timeout_s=0.5)
    asyncio.run(requests.execute(command(b"a")))
    assert executor.seen[0].timeout_s == 1


def test_a_bad_request_never_reaches_the_executor(tmp_path: Path) -> None:
    requests, executor = handler(tmp_path, Result(0, ""))
    response = asyncio.run(requests.execute(command(b"a", b"\xff")))
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "argument 1 is not valid UTF-8" in response.stderr
    assert executor.seen == []


def test_only_a_timeout_carries_timed_out_after_s(tmp_path: Path) -> None:
    """Buck2 reports any response with the field set as a timeout, whatever its exit code."""
    for kind in FailureKind:
        requests, _ = handler(tmp_path, Failure(kind, "no", timed_out_after_s=3))
        response = asyncio.run(requests.execute(command(b"a")))
        assert response.HasField("timed_out_after_s") == (kind is FailureKind.TIMED_OUT), kind


def test_a_key_variable_that_no_environment_can_hold_is_a_bad_request(tmp_path: Path) -> None:
    """Not UTF-8, or a NUL byte: the request is refused, naming the variable; it is not an
    internal error, and the executor never sees it."""
    requests, executor = handler(tmp_path, Result(0, ""), key_env=("JAVA_HOME",))
    for value, problem in ((b"/jdk\xff", "is not valid UTF-8"), (b"/j\0dk", "holds a NUL byte")):
        response = asyncio.run(requests.execute(command(b"a", env={b"JAVA_HOME": value})))
        assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
        assert f"environment variable JAVA_HOME {problem}" in response.stderr, response.stderr
        assert "internal error" not in response.stderr
    assert executor.seen == []


def test_a_variable_outside_key_env_is_not_checked(tmp_path: Path) -> None:
    requests, executor = handler(tmp_path, Result(0, ""), key_env=("JAVA_HOME",))
    asyncio.run(requests.execute(command(b"a", env={b"OTHER": b"\0\xff"})))
    assert executor.seen[0].key_env == ()


class Blocking:
    """An executor whose runs wait until released, recording whether they ended."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.finished = 0

    async def run(self, request: WorkRequest) -> Outcome:
        await self.release.wait()
        self.finished += 1
        return Result(0, "done")


def blocking_handler(tmp_path: Path) -> tuple[RequestHandler, Blocking]:
    settings = RuntimeConfig(command=("tool",))
    executor = Blocking()
    manager = BackendManager(settings, str(tmp_path), tmp_path / "logs")
    return RequestHandler(manager, tmp_path / "logs", executor), executor


def test_a_started_request_is_delivered_once(tmp_path: Path) -> None:
    async def scenario() -> list[pb.ExecuteResponse]:
        requests, executor = blocking_handler(tmp_path)
        delivered: list[pb.ExecuteResponse] = []
        requests.start(command(b"a"), delivered.append)
        await asyncio.sleep(0)
        executor.release.set()
        await requests.wait_idle()
        await requests.abort_all("too late")  # nothing left to abort, nothing delivered again
        return delivered

    delivered = asyncio.run(scenario())
    assert [(r.exit_code, r.stderr) for r in delivered] == [(0, "done")]


@pytest.mark.parametrize("began", [False, True], ids=["before_its_first_step", "while_running"])
def test_an_aborted_request_is_answered_once_with_the_reason(tmp_path: Path, began: bool) -> None:
    """Before its first step (abort_all in the same turn of the loop as start), the task's
    own code never runs and abort_all answers it; while running, the task answers itself."""

    async def scenario() -> tuple[list[pb.ExecuteResponse], int]:
        requests, executor = blocking_handler(tmp_path)
        delivered: list[pb.ExecuteResponse] = []
        requests.start(command(b"a"), delivered.append)
        if began:
            await asyncio.sleep(0)
        await requests.abort_all("the runtime is shutting down")
        return delivered, executor.finished

    delivered, finished = asyncio.run(scenario())
    assert len(delivered) == 1 and finished == 0
    assert delivered[0].exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "the runtime is shutting down" in delivered[0].stderr


def test_a_unary_caller_that_goes_away_leaves_its_request_running(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, int, int]:
        requests, executor = blocking_handler(tmp_path)
        call = asyncio.ensure_future(requests.execute_to_completion(command(b"a")))
        await asyncio.sleep(0.01)
        call.cancel()  # grpcio does this when Buck2 drops the call
        await asyncio.gather(call, return_exceptions=True)
        running = requests.in_flight
        executor.release.set()
        await requests.wait_idle()
        return call.cancelled(), running, executor.finished

    assert asyncio.run(scenario()) == (True, 1, 1)


def test_a_unary_call_is_answered_with_the_abort_reason(tmp_path: Path) -> None:
    async def scenario() -> pb.ExecuteResponse:
        requests, _ = blocking_handler(tmp_path)
        call = asyncio.ensure_future(requests.execute_to_completion(command(b"a")))
        await asyncio.sleep(0.01)
        await requests.abort_all("the runtime is shutting down")
        return await call

    response = asyncio.run(scenario())
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "the runtime is shutting down" in response.stderr
