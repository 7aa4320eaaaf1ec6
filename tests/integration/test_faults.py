"""Every fault ends with a clear answer and a runtime that still serves the next request."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from tests.conftest import (
    FAKE_WORKER,
    StartRuntime,
    backend_logs,
    every_server,
    fake_backend,
    wait_gone,
)
from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.proto import buck2_worker_pb2_grpc as pb_grpc
from workers_dev.emulator import Buck2Worker, StreamingSession, buck2_status, make_command

#: Every test that starts the runtime runs once on each server.
server = every_server


def assert_still_serves(worker: Buck2Worker) -> None:
    response = worker.run("echo", "still", "here")
    assert (response.exit_code, response.stderr) == (0, "still here")


def test_crash_mid_request_is_retried_once_then_reported(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend())
    response = worker.run("crash")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert buck2_status(response) == f"failed with exit code {RUNTIME_ERROR_EXIT_CODE}"
    assert "exited with code 3 before answering" in response.stderr
    assert "fake_worker: crashing on purpose" in response.stderr  # the stderr tail
    assert "retried 1 time(s) on a fresh backend" in response.stderr
    assert "log: " in response.stderr and "runtime log: " in response.stderr
    assert_still_serves(worker)


def test_retry_succeeds_on_a_fresh_backend_and_says_so(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    worker = start_runtime(fake_backend())
    response = worker.run("crash-once", str(tmp_path / "marker"))
    assert (response.exit_code, response.stderr.splitlines()[-1]) == (0, "survived")
    assert "the request was retried on a fresh backend process (retry 1 of 1)" in response.stderr


def test_retries_zero_disables_retry(start_runtime: StartRuntime, tmp_path: Path) -> None:
    worker = start_runtime(fake_backend(), ["--retries", "0"])
    response = worker.run("crash-once", str(tmp_path / "marker"))
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "retried" not in response.stderr
    assert worker.run("crash-once", str(tmp_path / "marker")).stderr == "survived"


@pytest.mark.parametrize("protocol", ["proto", "json"])
def test_garbage_on_stdout_is_quoted(start_runtime: StartRuntime, protocol: str) -> None:
    worker = start_runtime(fake_backend("--protocol", protocol), ["--protocol", protocol])
    response = worker.run("garbage")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "wrote an invalid response" in response.stderr
    assert "'Hello from a chatty worker!\\n" in response.stderr
    assert "Did it print something to stdout?" in response.stderr
    assert_still_serves(worker)


@pytest.mark.parametrize("protocol", ["proto", "json"])
def test_an_answer_marked_cancelled_that_nobody_cancelled_is_refused(
    start_runtime: StartRuntime, protocol: str
) -> None:
    """Bazel refuses it too; taken, it answered the request exit 0 with no output."""
    worker = start_runtime(fake_backend("--protocol", protocol), ["--protocol", protocol])
    response = worker.run("uncancelled")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "answered request id 0 as cancelled, which was never cancelled" in response.stderr
    assert_still_serves(worker)


def test_a_stray_line_of_spaces_is_not_taken_for_an_answer(start_runtime: StartRuntime) -> None:
    """In proto framing an empty line then ten spaces parse as a response of 10 bytes
    whose fields say only was_cancelled (a space is its tag): a worker that printed an
    indented line answered its request exit 0 (the text after it fails the backend, but
    what parsed before the bad bytes is delivered)."""
    worker = start_runtime(fake_backend("--protocol", "proto"), ["--protocol", "proto"])
    response = worker.run("raw", "\n          indented\n")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "wrote an invalid response" in response.stderr  # "indented" is no frame
    assert_still_serves(worker)


def test_backend_closing_stdout_is_discarded(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend(), ["--retries", "0"])
    response = worker.run("close-stdout")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "closed its stdout while still running" in response.stderr
    assert "closing stdout and staying alive" in response.stderr
    assert_still_serves(worker)


def test_a_singleplex_answer_naming_a_request_id_is_the_answer(start_runtime: StartRuntime) -> None:
    """Singleplex requests carry no id; Bazel's reader takes the next answer whatever id
    it names. It failed the backend here as a protocol error."""
    worker = start_runtime(fake_backend())
    first = worker.run("pid")
    response = worker.run("wrong-id")
    assert (response.exit_code, response.stderr) == (0, "")
    assert worker.run("pid").stderr == first.stderr  # the same warm backend


def test_wrong_request_id(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend("--multiplex"), ["--multiplex"])
    response = worker.run("wrong-id")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "answered request id" in response.stderr and "which is not in flight" in response.stderr
    assert_still_serves(worker)


def test_json_snake_case_response_is_read_and_flagged(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend("--protocol", "json"), ["--protocol", "json"])
    response = worker.run("snake")
    assert response.exit_code == 7
    assert "snake_case 'exit_code'" in response.stderr


def test_never_answers_times_out_and_next_request_gets_fresh_backend(
    start_runtime: StartRuntime,
) -> None:
    worker = start_runtime(fake_backend(), ["--max-instances", "1"])
    pid = worker.run("pid").stderr
    response = worker.execute(make_command(["silent"], timeout_s=1))
    assert buck2_status(response) == "timed out after 1 s"
    assert "ran past its timeout of 1 s" in response.stderr
    assert wait_gone([int(pid)]) == []
    assert worker.run("pid").stderr != pid
    assert_still_serves(worker)


def test_timeout_on_cancellable_multiplex_sends_cancel(
    start_runtime: StartRuntime, tmp_path: Path, log_dir: Path
) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"cancel_grace_s": 0.5}')
    worker = start_runtime(
        fake_backend("--multiplex"), ["--config", str(config), "--multiplex", "--cancellable"]
    )
    pid = worker.run("pid").stderr
    response = worker.execute(make_command(["sleep", "30"], timeout_s=1))
    assert response.timed_out_after_s == 1
    time.sleep(1.0)  # past cancel_grace_s: a backend that had not acknowledged is killed by now
    assert worker.run("pid").stderr == pid  # cancelled, not killed
    assert "fake_worker: cancelled request" in backend_logs(log_dir)


def test_a_late_second_answer_to_a_cancelled_request_spares_the_others(
    start_runtime: StartRuntime, tmp_path: Path, log_dir: Path
) -> None:
    """The backend answers a cancel and then the cancelled request itself (its work ended
    as the cancel came). That answer, for an id no longer in flight, once failed the
    backend as a protocol error, and every other request in flight on it with it."""
    config = tmp_path / "c.json"
    config.write_text('{"cancel_grace_s": 5}')
    worker = start_runtime(
        fake_backend("--multiplex"), ["--config", str(config), "--multiplex", "--cancellable"]
    )
    pid = worker.run("pid").stderr
    other: list[Any] = []
    thread = threading.Thread(target=lambda: other.append(worker.run("sleep", "2")))
    thread.start()
    cancelled = make_command(["sleep-answer-twice-if-cancelled", "30"], timeout_s=1)
    assert worker.execute(cancelled).timed_out_after_s == 1
    thread.join(30)
    assert [r.stderr for r in other] == ["slept"]
    assert worker.run("pid").stderr == pid  # the same backend: neither failed nor replaced
    assert "fake_worker: cancelled request" in backend_logs(log_dir)


def test_timeout_on_multiplex_that_ignores_cancel_kills_it(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"cancel_grace_s": 0.5}')
    worker = start_runtime(
        fake_backend("--multiplex", "--ignore-cancel"),
        ["--config", str(config), "--multiplex", "--cancellable"],
    )
    pid = worker.run("pid").stderr
    assert worker.execute(make_command(["sleep", "30"], timeout_s=1)).timed_out_after_s == 1
    deadline = time.monotonic() + 10
    while worker.run("pid").stderr == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.run("pid").stderr != pid


def test_huge_response(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend())
    size = 16 << 20
    response = worker.run("huge", str(size + 1))
    assert response.exit_code == 0 and len(response.stderr) == size + 1
    assert_still_serves(worker)


def test_a_response_past_max_response_mb_discards_the_backend_not_the_daemon(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """A runaway backend's response is refused as it arrives past `max_response_mb`
    (2 GiB before: the daemon held it all, and could die of it with every warm backend)."""
    config = tmp_path / "c.json"
    config.write_text('{"max_response_mb": 1, "retries": 0}')
    worker = start_runtime(fake_backend(), ["--config", str(config)])
    pid = worker.run("pid").stderr
    response = worker.run("huge", str(2 << 20))
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "wrote an invalid response" in response.stderr
    assert f"more than the {1 << 20} taken here" in response.stderr
    assert wait_gone([int(pid)]) == []
    assert worker.run("huge", str(1 << 19)).exit_code == 0  # under it, on a fresh backend
    assert_still_serves(worker)


def test_slow_start_backend_is_waited_for(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend("--slow-start", "2"))
    assert worker.run("echo", "late").stderr == "late"


def test_backend_that_dies_at_start(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend("--die-at-start"))
    response = worker.run("echo", "x")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "exited with code 4 before answering" in response.stderr
    assert "dying at start on purpose" in response.stderr


def test_backend_command_not_found(start_runtime: StartRuntime) -> None:
    worker = start_runtime(["/nonexistent/tool"])
    response = worker.run("echo", "x")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "'/nonexistent/tool' could not be started" in response.stderr


def test_invalid_utf8_argument(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend())
    response = worker.execute(make_command([b"echo", b"caf\xe9"]))
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "argument 1 is not valid UTF-8" in response.stderr
    assert_still_serves(worker)


def test_missing_argfile(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend())
    response = worker.run("echo", "@does/not/exist.args")
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "argument file 'does/not/exist.args' does not exist" in response.stderr
    assert_still_serves(worker)


def test_ten_mib_of_arguments(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend())
    words = ["w" * 1023] * 10 * 1024
    response = worker.run("echo", *words)
    assert response.exit_code == 0 and len(response.stderr) == 10 * 1024 * 1024 - 1


def test_thousand_concurrent_unary_requests(start_runtime: StartRuntime) -> None:
    """All 1,000 in flight at once, as Buck2's async client would send them."""
    worker = start_runtime(fake_backend())

    async def scenario() -> list[str]:
        async with grpc.aio.insecure_channel(worker.target) as channel:
            stub = pb_grpc.WorkerStub(channel)
            calls = [stub.Execute(make_command(["echo", str(i)])) for i in range(1000)]
            return [r.stderr for r in await asyncio.gather(*calls)]

    assert asyncio.run(scenario()) == [str(i) for i in range(1000)]


def test_multiplex_retries_start_a_bounded_number_of_processes(
    start_runtime: StartRuntime, runtime_dir: Path
) -> None:
    worker = start_runtime(fake_backend("--multiplex"), ["--multiplex", "--max-instances", "2"])
    worker.run("echo", "warm")
    peak = 0
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            backends = [
                p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and str(FAKE_WORKER) in p.info["cmdline"]
                and "--multiplex" in p.info["cmdline"]
            ]  # fmt: skip
            peak = max(peak, len(backends))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()

    async def scenario() -> list[pb.ExecuteResponse]:
        async with StreamingSession(worker.target, worker.proc) as session:
            sleepers = [
                asyncio.create_task(session.execute(make_command(["sleep", "0.5"])))
                for _ in range(12)
            ]
            await asyncio.sleep(0.3)
            await session.execute(make_command(["crash"]))
            return await asyncio.gather(*sleepers)

    try:
        responses = asyncio.run(scenario())
    finally:
        sampling = False
        sampler.join()
    assert all(r.stderr.endswith("slept") for r in responses)
    # The shared process (restarted for new work) plus at most max_instances retry processes.
    assert peak <= 1 + 1 + 2, peak


def test_retry_after_a_tool_change_uses_the_new_tool(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    tool = tmp_path / "tool.jar"
    tool.write_text("version 1")
    worker = start_runtime(fake_backend(), ["--tool-input", str(tool)])
    old_pid = worker.run("pid").stderr
    outcome: list[pb.ExecuteResponse] = []
    thread = threading.Thread(
        target=lambda: outcome.append(worker.run("crash-after", "0.5", str(tmp_path / "m")))
    )
    thread.start()
    time.sleep(0.2)
    tool.write_text("version 2, rebuilt")
    new_pid = worker.run("pid").stderr
    thread.join(30)
    assert outcome[0].stderr.endswith("survived")  # retried, on a fresh backend of its own
    # ... without bringing the old tool's backend back: the new tool's serve from here on
    assert old_pid != new_pid and worker.run("pid").stderr != old_pid


def test_out_of_range_response_is_answered_on_a_stream(start_runtime: StartRuntime) -> None:
    worker = start_runtime(
        fake_backend("--protocol", "json"), ["--protocol", "json", "--retries", "0"]
    )

    async def scenario() -> pb.ExecuteResponse:
        async with StreamingSession(worker.target, worker.proc) as session:
            return await asyncio.wait_for(session.execute(make_command(["bad-int"])), 20)

    response = asyncio.run(scenario())
    assert response.exit_code == RUNTIME_ERROR_EXIT_CODE
    assert "out of the int32 range" in response.stderr
    assert_still_serves(worker)


def test_thousand_concurrent_streaming_requests_multiplex(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend("--multiplex"), ["--multiplex"])

    async def scenario() -> list[pb.ExecuteResponse]:
        async with StreamingSession(worker.target, worker.proc) as session:
            return await asyncio.gather(
                *(session.execute(make_command(["echo", str(i)])) for i in range(1000))
            )

    responses = asyncio.run(scenario())
    assert [r.stderr for r in responses] == [str(i) for i in range(1000)]


def test_multiplex_crash_fails_every_in_flight_request_then_retries(
    start_runtime: StartRuntime,
) -> None:
    worker = start_runtime(fake_backend("--multiplex"), ["--multiplex"])

    async def scenario() -> list[pb.ExecuteResponse]:
        async with StreamingSession(worker.target, worker.proc) as session:
            sleepers = [
                asyncio.create_task(session.execute(make_command(["sleep", "1"]))) for _ in range(3)
            ]
            await asyncio.sleep(0.3)
            crash = await session.execute(make_command(["crash"]))
            return [crash, *await asyncio.gather(*sleepers)]

    crash, *sleepers = asyncio.run(scenario())
    assert crash.exit_code == RUNTIME_ERROR_EXIT_CODE
    for response in sleepers:
        assert (response.exit_code, response.stderr.splitlines()[-1]) == (0, "slept")
        assert "retried on a fresh backend process" in response.stderr


def test_an_undecodable_stream_message_ends_the_stream_with_invalid_argument(
    start_runtime: StartRuntime,
) -> None:
    """A message on ExecuteStream that is not an ExecuteCommandStream: the requests before
    it are answered, then the stream ends with INVALID_ARGUMENT saying what was wrong (it
    used to end with OK, the message silently dropped)."""
    worker = start_runtime(fake_backend())
    good = pb.ExecuteCommandStream(request=make_command(["echo", "before"]), id=7)

    async def scenario() -> tuple[list[pb.ExecuteResponseStream], grpc.aio.AioRpcError | None]:
        async with grpc.aio.insecure_channel(worker.target) as channel:
            call = channel.stream_stream(
                "/worker.WorkerStreaming/ExecuteStream",
                request_serializer=lambda raw: raw,
                response_deserializer=pb.ExecuteResponseStream.FromString,
            )(iter([good.SerializeToString(), b"\xff\xff\xff"]))
            answers = []
            try:
                async for answer in call:
                    answers.append(answer)
            except grpc.aio.AioRpcError as exc:
                return answers, exc
            return answers, None

    answers, error = asyncio.run(scenario())
    assert [(a.id, a.response.stderr) for a in answers] == [(7, "before")]
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "not an ExecuteCommandStream" in (error.details() or "")
    assert_still_serves(worker)
