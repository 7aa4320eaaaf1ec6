"""A stand-in for Buck2's side of the local worker protocol, for tests, the demo and benchmarks.

It does what Buck2's source does with one ``WorkerInfo`` during one command
(app/buck2_execute_impl/src/executors/worker.rs in Buck2's source): spawn the worker with
``WORKER_SOCKET=/tmp/buck2_worker/<id>/socket``, cwd at the project root and
stdout/stderr to files beside the socket; poll a plain ``connect()`` with 50 ms
backoff doubling to 500 ms for up to 60 s; send requests with bytes argv and only
TMPDIR, Buck2's variables and the action's own env (unary ``Execute``, or one
``ExecuteStream`` with ids from 0 after awaiting the response headers); retry
``UNAVAILABLE`` on unary calls 1 + 5 times with 100-500 ms backoff; at the end of the
command, SIGTERM to the worker's process group, then SIGKILL after the shutdown timeout
(10 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

# isort: off
# Importing worker_runtime.buck2 settles grpcio's process-wide tuning before grpc loads:
# the stand-in's client runs with the same settings as the runtime's server.
import worker_runtime.buck2  # noqa: F401
import grpc

# isort: on

from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.proto import buck2_worker_pb2_grpc as pb_grpc

BUCK2_WORKER_DIR = "/tmp/buck2_worker"
CONNECT_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 10.0
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
_IDS = itertools.count()
#: Buck2's trace id of the command, one for all its actions (this process's "command").
BUILD_ID = str(uuid.uuid4())


class WorkerSpawnError(Exception):
    """The worker did not come up: Buck2's "Worker exited before connecting" and friends."""


class WorkerRequestError(Exception):
    """A request failed the way Buck2 reports it: "Worker exited while running command" or
    "Error sending ExecuteCommand to worker", both pointing at the worker's log files."""


def action_env(
    scratch: str, extra: Mapping[str, str] | None = None
) -> list[pb.ExecuteCommand.EnvironmentEntry]:
    """The per-action environment Buck2 sends with every request: TMPDIR, the action's
    env, then Buck2's own variables, which the action cannot override (appended last; one
    build id for the whole command), and nothing of the daemon's environment (no PATH,
    no HOME): app/buck2_execute_impl/src/executors/local.rs."""
    env: dict[str, str] = {"TMPDIR": scratch, "BUCK_SCRATCH_PATH": scratch}
    env.update(extra or {})
    env.update(
        {
            "BUCK2_DAEMON_UUID": "00000000-0000-0000-0000-000000000000",
            "BUCK_BUILD_ID": BUILD_ID,
        }
    )
    return [
        pb.ExecuteCommand.EnvironmentEntry(key=k.encode(), value=v.encode()) for k, v in env.items()
    ]


def make_command(
    argv: Sequence[str | bytes],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: int | None = None,
    scratch: str = "/tmp",
) -> pb.ExecuteCommand:
    command = pb.ExecuteCommand(
        argv=[a if isinstance(a, bytes) else a.encode() for a in argv],
        env=action_env(scratch, env),
    )
    if timeout_s is not None:
        command.timeout_s = timeout_s
    return command


def buck2_status(response: pb.ExecuteResponse) -> str:
    """What Buck2 makes of a response (its worker executor): a response that carries
    ``timed_out_after_s`` is a timeout whatever its exit code; otherwise its exit code
    decides."""
    if response.HasField("timed_out_after_s"):
        return f"timed out after {response.timed_out_after_s} s"
    return "success" if response.exit_code == 0 else f"failed with exit code {response.exit_code}"


class Buck2Worker:
    """One worker process as Buck2 manages it during one command."""

    def __init__(
        self,
        exe: Sequence[str],
        *,
        project_root: str | Path,
        env: Mapping[str, str] | None = None,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
    ) -> None:
        self.exe = list(exe)
        self.project_root = str(project_root)
        self.env = dict(env or {})
        self.shutdown_timeout_s = shutdown_timeout_s
        os.makedirs(BUCK2_WORKER_DIR, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix=f"{os.getpid()}-{next(_IDS)}-", dir=BUCK2_WORKER_DIR)
        self.socket_path = os.path.join(self.dir, "socket")
        self.stdout_path = os.path.join(self.dir, "stdout")
        self.stderr_path = os.path.join(self.dir, "stderr")
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None

    # -- lifecycle -------------------------------------------------------------------
    def spawn(self) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env["WORKER_SOCKET"] = self.socket_path
        env["PWD"] = self.project_root
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.exe,
                cwd=self.project_root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            if self.proc.poll() is not None:
                raise WorkerSpawnError(
                    f"Worker exited before connecting (exit code {self.proc.returncode}); "
                    f"stderr: {self.stderr()!r}"
                )
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.socket_path)
                connected = True
            except OSError:
                connected = False
            finally:
                probe.close()
            # Buck2 (get_channel_uds) connects and completes the HTTP/2 handshake before it
            # counts the worker as ready; requests then use that one connection.
            if connected and self._connect_channel(deadline):
                return
            if time.monotonic() >= deadline:
                raise WorkerSpawnError(f"Worker failed to connect within {timeout_s} seconds")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _connect_channel(self, deadline: float) -> bool:
        channel = grpc.insecure_channel(self.target, options=GRPC_OPTIONS)
        failed: list[grpc.ChannelConnectivity] = []

        def watch(state: grpc.ChannelConnectivity) -> None:
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                failed.append(state)

        channel.subscribe(watch)
        ready = grpc.channel_ready_future(channel)
        # Buck2 races the connection against the worker's exit (worker.rs: a select of
        # `connect` and `check_exit`): a worker that listens, then exits before anything
        # answers, is "Worker exited before connecting", at once. A connection that
        # fails once the socket took it (reset by a worker that stopped listening) is not
        # tried again: Buck2 fails the start ("Worker failed to spawn: transport error").
        while True:
            try:
                ready.result(timeout=min(0.05, max(0.01, deadline - time.monotonic())))
                break
            except grpc.FutureTimeoutError:
                assert self.proc is not None
                if failed and self.proc.poll() is None:
                    ready.cancel()
                    channel.close()
                    raise WorkerSpawnError(
                        "Worker failed to spawn: transport error (the connection failed "
                        "after the socket took it, before the worker answered)"
                    ) from None
                if self.proc.poll() is not None or time.monotonic() >= deadline:
                    ready.cancel()
                    channel.close()
                    return False
        channel.unsubscribe(watch)
        self._channel = channel
        return True

    def start(self) -> Buck2Worker:
        self.spawn()
        self.wait_ready()
        return self

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.stderr_path).read_text(errors="replace")
        return ""

    def terminate(self) -> int | None:
        """End of the command: SIGTERM to the worker's process, SIGKILL after the timeout,
        to that process only (Buck2's try_terminate_process_gracefully, kill_util.rs; the
        group is signalled only when no grace is set)."""
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(self.shutdown_timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        return self.proc.returncode

    def cleanup(self) -> None:
        """The test's own hygiene, not Buck2's: whatever is left of the worker's group."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Buck2Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.terminate()
        finally:
            self.cleanup()

    # -- requests --------------------------------------------------------------------
    @property
    def target(self) -> str:
        return f"unix:{self.socket_path}"

    def channel(self) -> grpc.Channel:
        """The connection made when the worker became ready (Buck2 makes no other)."""
        if self._channel is None:
            raise WorkerRequestError("the worker was never connected (call start() first)")
        return self._channel

    def _logs_hint(self) -> str:
        return f"see worker logs:\n{self.stdout_path}\n{self.stderr_path}"

    def execute(
        self, command: pb.ExecuteCommand, *, deadline_s: float | None = None
    ) -> pb.ExecuteResponse:
        """Unary Execute, as Buck2 sends it: retried on UNAVAILABLE after 100 ms, then every
        500 ms (tokio-retry's from_millis(100), capped), the socket dialled again if the
        connection was lost, and given up as soon as the worker process exits."""
        for attempt, delay in enumerate((0.1, 0.5, 0.5, 0.5, 0.5, 0.0)):
            call = pb_grpc.WorkerStub(self.channel()).Execute.future(command, timeout=deadline_s)
            try:
                return self._wait(call)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 5:
                    raise WorkerRequestError(
                        f"Error sending ExecuteCommand to worker: {exc.code()}: {exc.details()}, "
                        f"{self._logs_hint()}"
                    ) from exc
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _wait(self, call: grpc.Future) -> pb.ExecuteResponse:
        """Buck2 races each request against the worker's exit."""
        while True:
            try:
                response: pb.ExecuteResponse = call.result(timeout=0.2)
                return response
            except grpc.FutureTimeoutError:
                if self.proc is not None and self.proc.poll() is not None:
                    call.cancel()
                    raise WorkerRequestError(
                        f"Worker exited while running command, {self._logs_hint()}"
                    ) from None

    def run(self, *argv: str | bytes, **kwargs: object) -> pb.ExecuteResponse:
        """Convenience: one unary request with these arguments."""
        return self.execute(make_command(argv, **kwargs))  # type: ignore[arg-type]


class StreamingSession:
    """One ``ExecuteStream`` as Buck2 opens it for a ``WorkerInfo(streaming = True)``.

    Use from asyncio: ``async with StreamingSession(worker.target, worker.proc) as s: await
    s.execute(cmd)``. As Buck2 does, each request is raced against the worker process's
    exit ("Worker exited while running command"), and once the stream has ended every
    later request fails at once ("Stream closed while waiting for response", worker.rs).
    Without a process (a bare server in a benchmark) only the stream is watched.
    """

    def __init__(self, target: str, process: subprocess.Popen[bytes] | None = None) -> None:
        self.target = target
        self.process = process
        self._ended = False
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[pb.ExecuteResponse]] = {}
        self._outgoing: asyncio.Queue[pb.ExecuteCommandStream | None] = asyncio.Queue()

    async def __aenter__(self) -> StreamingSession:
        self._channel = grpc.aio.insecure_channel(self.target, options=GRPC_OPTIONS)
        stub = pb_grpc.WorkerStreamingStub(self._channel)
        self._call = stub.ExecuteStream(self._requests())
        # Buck2 awaits the call (the response headers) before sending any request.
        await asyncio.wait_for(self._call.initial_metadata(), 10)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _requests(self):  # type: ignore[no-untyped-def]
        while (item := await self._outgoing.get()) is not None:
            yield item

    async def _read(self) -> None:
        failure: Exception = ConnectionError("the worker ended the stream with requests unanswered")
        try:
            async for message in self._call:
                future = self._waiting.pop(message.id, None)
                if future is None:
                    failure = ConnectionError(f"the worker answered unknown stream id {message.id}")
                    break
                future.set_result(message.response)
        except grpc.aio.AioRpcError as exc:
            failure = exc
        self._ended = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(failure)
        self._waiting.clear()

    async def execute(self, command: pb.ExecuteCommand) -> pb.ExecuteResponse:
        if self._ended:
            raise ConnectionError("Stream closed while waiting for response")
        request_id = next(self._ids)
        future: asyncio.Future[pb.ExecuteResponse] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._outgoing.put_nowait(pb.ExecuteCommandStream(request=command, id=request_id))
        if self.process is None:
            return await future
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.2)
            if done:
                return future.result()
            if self.process.poll() is not None:
                # An answer the worker wrote before it exited is in the socket already:
                # Buck2's reader has it by the time the exit is seen; so has this one, a
                # moment later.
                done, _ = await asyncio.wait({future}, timeout=0.5)
                if done:
                    return future.result()
                self._waiting.pop(request_id, None)
                raise WorkerRequestError("Worker exited while running command")

    async def __aexit__(self, *exc: object) -> None:
        self._outgoing.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 10)
        await self._channel.close()
