"""The ways a client can misbehave at the HTTP/2 and gRPC level, on both servers
(grpcio's and worker_runtime/buck2/h2_server.py): callers that go away, unknown methods,
bytes that are not HTTP/2, messages that are not protobuf or are compressed. The three RPCs'
ordinary behaviour runs on both servers in test_serve.py, test_faults.py and
test_lifecycle.py."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import StartRuntime, every_server, fake_backend
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.proto import buck2_worker_pb2_grpc as pb_grpc
from workers_dev.emulator import Buck2Worker, make_command

server = every_server


def assert_still_serves(worker: Buck2Worker) -> None:
    response = worker.run("echo", "still", "here")
    assert (response.exit_code, response.stderr) == (0, "still here")


def wait_for(path: Path, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()


def test_a_unary_caller_that_goes_away_leaves_its_request_running(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """Buck2 dropping an Execute call (its command interrupted) must not kill the warm
    backend: the request runs to its end and the backend serves the next one."""
    worker = start_runtime(fake_backend())
    pid = worker.run("pid").stderr
    written = tmp_path / "out"
    call = pb_grpc.WorkerStub(worker.channel()).Execute.future(
        make_command(["sleep-write", "0.5", str(written)])
    )
    time.sleep(0.2)
    assert call.cancel()
    assert wait_for(written), "the request did not run on after its caller went away"
    assert worker.run("pid").stderr == pid


def test_an_exec_caller_that_goes_away_cancels_its_request(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    """Exec is the cancellable RPC: its caller going away cancels the request (a singleplex
    backend that cannot cancel is replaced)."""
    worker = start_runtime(fake_backend())
    pid = worker.run("pid").stderr
    written = tmp_path / "out"
    events = iter([pb.ExecuteEvent(command=make_command(["sleep-write", "1", str(written)]))])
    call = pb_grpc.WorkerStub(worker.channel()).Exec.future(events)
    time.sleep(0.3)
    assert call.cancel()
    time.sleep(1.5)
    assert not written.exists(), "the request ran on after its Exec caller went away"
    assert worker.run("pid").stderr != pid


def test_an_unknown_method_is_unimplemented(start_runtime: StartRuntime) -> None:
    worker = start_runtime(fake_backend())
    method = worker.channel().unary_unary(
        "/worker.Worker/NoSuchMethod",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    with pytest.raises(grpc.RpcError) as caught:
        method(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert_still_serves(worker)


def test_bytes_that_are_not_http2_close_only_their_own_connection(
    start_runtime: StartRuntime,
) -> None:
    worker = start_runtime(fake_backend())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(10)
        probe.connect(worker.socket_path)
        probe.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\xff" * 64)
        while probe.recv(65536):  # until the server closes this connection
            pass
    assert_still_serves(worker)


def test_an_undecodable_unary_request_is_refused_and_nothing_runs(
    start_runtime: StartRuntime, server: str
) -> None:
    worker = start_runtime(fake_backend())
    method = worker.channel().unary_unary(
        "/worker.Worker/Execute",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.ExecuteResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        method(b"\xff\xff\xff", timeout=10)
    if server == "h2":
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not an ExecuteCommand" in (caught.value.details() or "")
    else:  # grpcio's own answer
        assert caught.value.code() == grpc.StatusCode.UNKNOWN
        assert "DecodeError" in (caught.value.details() or "")
    assert_still_serves(worker)


@pytest.mark.parametrize("server", ["h2"])
def test_h2_refuses_compressed_messages_clearly(start_runtime: StartRuntime, server: str) -> None:
    """Buck2 never compresses; a client that does is told so, and nothing runs."""
    worker = start_runtime(fake_backend())
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.WorkerStub(worker.channel()).Execute(
            make_command(["echo", "x"]), timeout=10, compression=grpc.Compression.Gzip
        )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "compressed messages are not supported" in (caught.value.details() or "")

    assert_still_serves(worker)


@pytest.mark.parametrize("server", ["h2"])
def test_h2_undecodable_exec_event_is_invalid_argument(
    start_runtime: StartRuntime, server: str
) -> None:
    worker = start_runtime(fake_backend())
    method = worker.channel().stream_unary(
        "/worker.Worker/Exec",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.ExecuteResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        method(iter([b"\xff\xff\xff"]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an ExecuteEvent" in (caught.value.details() or "")
    assert_still_serves(worker)


def test_many_streams_on_one_connection_each_get_their_own_answers(
    start_runtime: StartRuntime,
) -> None:
    worker = start_runtime(fake_backend())

    async def scenario() -> list[list[str]]:
        async with grpc.aio.insecure_channel(worker.target) as channel:
            stub = pb_grpc.WorkerStreamingStub(channel)

            async def one(stream: int) -> list[str]:
                requests = [
                    pb.ExecuteCommandStream(request=make_command(["echo", f"{stream}-{i}"]), id=i)
                    for i in range(5)
                ]
                answers = [a async for a in stub.ExecuteStream(iter(requests))]
                return sorted(a.response.stderr for a in answers)

            return await asyncio.gather(*(one(s) for s in range(8)))

    assert asyncio.run(scenario()) == [sorted(f"{s}-{i}" for i in range(5)) for s in range(8)]
