"""The Buck2 adapter: turns Buck2's ExecuteCommand into a work request (argv decoding,
@argfile expansion, key_env values, the worker_run envelope, the timeout), runs it on the
routing's executor (execution/) and turns its outcome into an ExecuteResponse. It also
owns the requests' life: draining on SIGTERM, aborting, running on when Buck2 leaves.

Every failure becomes an ExecuteResponse with a clear stderr; nothing here raises to
the gRPC layer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worker_runtime.backends.manager import BackendManager
from worker_runtime.envelope import ENVELOPE_ENV
from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE, RequestError
from worker_runtime.execution.executor import Executor
from worker_runtime.execution.files import off_loop
from worker_runtime.execution.outcome import Failure, FailureKind, Outcome, Result, WorkRequest
from worker_runtime.execution.quick_reads import quick_root
from worker_runtime.execution.routing import executor_for
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.protocol.argfiles import expand_argfiles, is_argfile

LOGGER = logging.getLogger(__name__)

#: Where a started request's response goes.
Deliver = Callable[[pb.ExecuteResponse], None]

# What both servers (server.py, h2_server.py) answer in the same cases.
EXEC_WITHOUT_COMMAND = "an Exec stream must start with a command event"
CANCELLED_BY_CLIENT = "the request was cancelled by the client"


def unreadable_stream_message(problem: str) -> str:
    """Why an ExecuteStream ended after a message it could not read (``problem``)."""
    return f"{problem}; the requests before it were answered, and the stream was ended"


class RequestHandler:
    """Serves ExecuteCommands for one Buck2 socket; safe to call concurrently."""

    def __init__(
        self, manager: BackendManager, log_dir: Path, executor: Executor | None = None
    ) -> None:
        self.manager = manager
        self.config = manager.config
        self.executor = executor or executor_for(manager)
        self.runtime_log = log_dir / "runtime.log"
        #: key_env names as Buck2 sends them (bytes), to their names.
        self._key_env = {name.encode(): name for name in self.config.key_env}
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        #: Every running request, including those whose client went away (held here:
        #: asyncio keeps tasks only weakly), with where its response goes if ``start``
        #: began it.
        self._running: dict[asyncio.Task[Any], Deliver | None] = {}
        self._abort_reason: str | None = None

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def error(self, message: str, **extra: int) -> pb.ExecuteResponse:
        return pb.ExecuteResponse(
            exit_code=RUNTIME_ERROR_EXIT_CODE,
            stderr=f"worker-runtime: error: {message}\n  runtime log: {self.runtime_log}\n",
            **extra,
        )

    def start(self, command: pb.ExecuteCommand, deliver: Deliver) -> None:
        """Runs ``execute`` as a task of its own, which runs to its end whatever becomes of
        its caller: when Buck2 goes away (the RPC or the stream is dropped) its outputs are
        still written and its backend goes back to the pool clean and warm instead of being
        killed. Timeouts, explicit cancels (``Exec``) and ``abort_all`` still cancel it.

        ``deliver`` gets the response exactly once, on the event loop: from the task itself
        as it ends (not from a done callback, which would cost the answer one more turn of
        the loop), or from ``abort_all`` for a task it cancelled before it began."""
        task = asyncio.get_running_loop().create_task(self._run(command, deliver))
        self._running[task] = deliver

    async def _run(self, command: pb.ExecuteCommand, deliver: Deliver) -> None:
        try:
            response = await self.execute(command)
        except asyncio.CancelledError:  # abort_all; execute answers every Exception itself
            deliver(self.error(self._abort_reason or "the request was cancelled"))
            raise
        except BaseException as exc:
            deliver(self.error(f"the request ended with {exc!r}"))
            raise
        finally:
            if (task := asyncio.current_task()) is not None:
                self._running.pop(task, None)
        deliver(response)

    async def execute_to_completion(self, command: pb.ExecuteCommand) -> pb.ExecuteResponse:
        """``start``, awaited: a cancelled caller leaves the request running to its end."""
        answer: asyncio.Future[pb.ExecuteResponse] = asyncio.get_running_loop().create_future()
        self.start(command, functools.partial(_settle, answer))
        try:
            return await answer
        except asyncio.CancelledError:
            LOGGER.info("client went away; the request runs on to completion")
            raise

    def track(self, task: asyncio.Task[pb.ExecuteResponse]) -> None:
        """Makes ``abort_all`` cancel a request started outside ``start``."""
        self._running[task] = None
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._running.pop(task, None)

    @property
    def abort_reason(self) -> str | None:
        return self._abort_reason

    async def abort_all(self, reason: str) -> None:
        """Cancels every running request (their backends are left clean); each still
        answers its client, if it has one, with ``reason``."""
        self._abort_reason = reason
        running = dict(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for task in running:
            # Still listed with a deliver: cancelled before its first step, so ``_run``
            # never ran to answer it.
            deliver = self._running.pop(task, None)
            if deliver is not None:
                deliver(self.error(reason))

    async def drain(self, label: str, grace_s: float) -> None:
        """Refuses new requests and lets in-flight ones finish for ``grace_s``; whatever
        still runs then is cancelled (its backend left clean) and answered clearly."""
        LOGGER.info("%s: draining %d in-flight request(s)", label, self.in_flight)
        self.draining = True
        try:
            await asyncio.wait_for(self.wait_idle(), grace_s)
        except TimeoutError:
            LOGGER.warning(
                "%s: %d request(s) still running after %g s: cancelling them",
                label,
                self.in_flight,
                grace_s,
            )
        await self.abort_all(
            f"the worker runtime is shutting down and the request did not finish within "
            f"{grace_s:g} s of the stop signal; it was cancelled"
        )

    async def execute(self, command: pb.ExecuteCommand) -> pb.ExecuteResponse:
        if self.draining:
            return self.error("the worker runtime is shutting down (it received SIGTERM)")
        self.in_flight += 1
        self._idle.clear()
        try:
            request = await self.prepared(self.work_request(command))
            outcome = request if isinstance(request, Failure) else await self.executor.run(request)
        except RequestError as exc:
            LOGGER.info("bad request: %s", exc)
            return self.error(str(exc))
        except Exception as exc:  # every request gets an answer, whatever went wrong
            LOGGER.exception("internal error while serving a request")
            return self.error(
                f"internal error while serving the request: {exc!r}. This is a bug in "
                "worker-runtime; please report it with the runtime log"
            )
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        return self.response(outcome)

    def response(self, outcome: Outcome) -> pb.ExecuteResponse:
        notes = "".join(outcome.notes)
        if isinstance(outcome, Result):
            return pb.ExecuteResponse(exit_code=outcome.exit_code, stderr=notes + outcome.output)
        if outcome.kind is FailureKind.BAD_REQUEST:
            LOGGER.info("bad request: %s", outcome.message)
        if outcome.kind is FailureKind.TIMED_OUT:
            # Buck2 reports any response carrying this field as a timeout, whatever its
            # exit code: it is set for timeouts only.
            response = self.error(outcome.message, timed_out_after_s=outcome.timed_out_after_s)
        else:
            response = self.error(outcome.message)
        response.stderr = notes + response.stderr
        return response

    async def prepared(self, request: WorkRequest) -> WorkRequest | Failure:
        """``request`` with its @argfiles expanded. Small ones beneath the project root
        whose reading cannot wait are read at once (execution/quick_reads.py); the others
        off the event loop (execution/files.py), and reading them counts against the
        request's timeout (counted from its arrival), which stays as Buck2 gave it."""
        if not any(is_argfile(argument) for argument in request.arguments):
            return request
        root = quick_root(self.manager.cwd)
        if root is not None and (quick := root.expand(request.arguments)) is not None:
            return dataclasses.replace(request, arguments=tuple(quick))
        left = request.time_left()
        try:
            async with asyncio.timeout(None if left is None else max(0.0, left)):
                expanded = await off_loop(
                    expand_argfiles, list(request.arguments), self.manager.cwd
                )
        except TimeoutError:
            return Failure(
                FailureKind.TIMED_OUT,
                f"reading the request's argument files took longer than its timeout of "
                f"{request.timeout_s} s, and it was not run; is one of them a FIFO, or on a "
                "file system that does not answer?",
                timed_out_after_s=request.timeout_s,
            )
        # The time the read took counts against the timeout (from ``started``), which
        # stays as Buck2 gave it.
        return dataclasses.replace(request, arguments=tuple(expanded))

    def work_request(self, command: pb.ExecuteCommand) -> WorkRequest:
        """Buck2's ExecuteCommand as a work request, without reading any file: argv
        decoded, the key_env values and the envelope path picked from its env, and its
        timeout (or the config's default). ``prepared`` expands its @argfiles."""
        try:
            args = [raw.decode("utf-8") for raw in command.argv]
        except UnicodeDecodeError:
            raise self._undecodable_argument(command.argv) from None
        arguments = tuple(args)
        found: dict[str, str] = {}
        envelope_path = ""
        for entry in command.env:
            key = entry.key
            if key == _ENVELOPE_KEY:
                envelope_path = entry.value.decode("utf-8", "replace")
            name = self._key_env.get(key)
            if name is not None:
                found[name] = _key_env_value(name, entry.value)
        timeout = command.timeout_s if command.HasField("timeout_s") else 0
        if not timeout and self.config.default_timeout_s is not None:
            # Whole seconds, rounded up: 0.5 s must not become 0, which is no timeout.
            timeout = math.ceil(self.config.default_timeout_s)
        return WorkRequest(
            arguments, tuple(sorted(found.items())), envelope_path, timeout,
            started=time.monotonic(),
        )  # fmt: skip

    @staticmethod
    def _undecodable_argument(argv: Sequence[bytes]) -> RequestError:
        for index, raw in enumerate(argv):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return RequestError(
                    f"argument {index} is not valid UTF-8 (at byte {exc.start}: "
                    f"{raw[max(0, exc.start - 8) : exc.start + 8]!r}); Bazel-protocol backends "
                    "take text arguments: pass such paths through an @argfile or rename them"
                )
        raise AssertionError("every argument decodes")


#: The envelope variable's name as Buck2 sends it (bytes).
_ENVELOPE_KEY = ENVELOPE_ENV.encode()


def _key_env_value(name: str, raw: bytes) -> str:
    """A key_env variable's value as text, which a backend's environment can hold."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"environment variable {name} is not valid UTF-8") from None
    if "\0" in value:
        raise RequestError(
            f"environment variable {name} holds a NUL byte (at {value.index(chr(0))}), "
            "which no process environment can hold"
        )
    return value


def _settle(answer: asyncio.Future[pb.ExecuteResponse], response: pb.ExecuteResponse) -> None:
    """Gives a unary call its response, unless its caller has gone (the future cancelled)."""
    if not answer.done():
        answer.set_result(response)
