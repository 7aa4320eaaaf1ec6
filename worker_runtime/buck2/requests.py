"""Turns Buck2's ExecuteCommand into a backend request and the backend's answer into an
ExecuteResponse: argv decoding, @argfile expansion, the worker key, input digests (from
the worker_run envelope), timeouts, retries.

Every failure becomes an ExecuteResponse with a clear stderr; nothing here raises to
the gRPC layer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from worker_runtime.backends.manager import BackendManager
from worker_runtime.envelope import ENVELOPE_ENV, read_envelope
from worker_runtime.errors import (
    RUNTIME_ERROR_EXIT_CODE,
    BackendError,
    BackendStartError,
    RequestError,
)
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.protocol.argfiles import expand_argfiles
from worker_runtime.protocol.messages import WorkInput

if TYPE_CHECKING:
    from worker_runtime.remote.client import RemoteResult

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    #: Values of the config's key_env variables; with the tool digests they pick the key.
    key_env: tuple[tuple[str, str], ...]
    arguments: tuple[str, ...]
    #: The envelope's input files with their digests (Bazel's WorkRequest.inputs).
    inputs: tuple[WorkInput, ...] = ()
    #: The envelope's path, for a request routed to remote execution.
    envelope: str = ""


class RequestHandler:
    """Serves ExecuteCommands for one Buck2 socket; safe to call concurrently."""

    def __init__(self, manager: BackendManager, log_dir: Path) -> None:
        self.manager = manager
        self.config = manager.config
        self.runtime_log = log_dir / "runtime.log"
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        #: Every request started through execute_to_completion, including those whose
        #: client went away (held here: asyncio keeps tasks only weakly).
        self._running: set[asyncio.Task[pb.ExecuteResponse]] = set()
        self._abort_reason: str | None = None
        #: The remote halves of races the local side won, until their threads end.
        self._leftovers: set[asyncio.Future[RemoteResult]] = set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def error(self, message: str, **extra: int) -> pb.ExecuteResponse:
        return pb.ExecuteResponse(
            exit_code=RUNTIME_ERROR_EXIT_CODE,
            stderr=f"worker-runtime: error: {message}\n  runtime log: {self.runtime_log}\n",
            **extra,
        )

    async def execute_to_completion(self, command: pb.ExecuteCommand) -> pb.ExecuteResponse:
        """``execute``, except that when the caller is cancelled (Buck2 went away, the RPC
        was dropped) the request still runs to its end: its outputs are written and its
        backend is returned to the pool clean and warm instead of being killed. Timeouts,
        explicit cancels (``Exec``) and ``abort_all`` still cancel it."""
        task = asyncio.ensure_future(self.execute(command))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                if not task.done():
                    LOGGER.info("client went away; the request runs on to completion")
                raise
            # Not us: the request itself was cancelled by abort_all.
            return self.error(self._abort_reason or "the request was cancelled")

    def track(self, task: asyncio.Task[pb.ExecuteResponse]) -> None:
        """Makes ``abort_all`` cancel a request started outside execute_to_completion."""
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    @property
    def abort_reason(self) -> str | None:
        return self._abort_reason

    async def abort_all(self, reason: str) -> None:
        """Cancels every running request (their backends are left clean); each still
        answers its client, if it has one, with ``reason``."""
        self._abort_reason = reason
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def execute(self, command: pb.ExecuteCommand) -> pb.ExecuteResponse:
        if self.draining:
            return self.error("the worker runtime is shutting down (it received SIGTERM)")
        self.in_flight += 1
        self._idle.clear()
        try:
            prepared = self.prepare(command)
            timeout = command.timeout_s if command.HasField("timeout_s") else 0
            if not timeout and self.config.default_timeout_s is not None:
                timeout = int(self.config.default_timeout_s)
            if prepared.envelope and self.config.routing == "race":
                return await self._with_timeout(self._race(prepared, timeout), timeout)
            if prepared.envelope and self._goes_remote(prepared):
                return await self._run_remote(prepared, timeout)
            return await self._with_timeout(self._run(prepared), timeout)
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

    def prepare(self, command: pb.ExecuteCommand) -> PreparedRequest:
        args: list[str] = []
        for index, raw in enumerate(command.argv):
            try:
                args.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise RequestError(
                    f"argument {index} is not valid UTF-8 (at byte {exc.start}: "
                    f"{raw[max(0, exc.start - 8) : exc.start + 8]!r}); Bazel-protocol backends "
                    "take text arguments: pass such paths through an @argfile or rename them"
                ) from None
        arguments = tuple(expand_argfiles(args, self.manager.cwd))
        key_env: tuple[tuple[str, str], ...] = ()
        wanted = set(self.config.key_env)
        found: dict[str, str] = {}
        envelope_path = ""
        for entry in command.env:
            name = entry.key.decode("utf-8", "replace")
            if name == ENVELOPE_ENV:
                envelope_path = entry.value.decode("utf-8", "replace")
            if name in wanted:
                try:
                    found[name] = entry.value.decode("utf-8")
                except UnicodeDecodeError:
                    raise RequestError(f"environment variable {name} is not valid UTF-8") from None
        key_env = tuple(sorted(found.items()))
        if self.config.routing in ("auto", "race") and envelope_path:
            # Either side may run it (auto: local while the key's pool has a free slot;
            # race: both): both are made ready.
            return PreparedRequest(
                key_env, arguments, self.input_digests(envelope_path), envelope_path
            )
        if self.config.routing == "remote":
            if not envelope_path:
                raise RequestError(
                    "routing `remote` needs the envelope worker_run attaches to each action "
                    f"(${ENVELOPE_ENV}); this action has none: register it with worker_run"
                )
            return PreparedRequest(key_env, arguments, (), envelope_path)
        return PreparedRequest(key_env, arguments, self.input_digests(envelope_path))

    def input_digests(self, envelope_path: str) -> tuple[WorkInput, ...]:
        """The envelope's inputs with their digests. A local request runs without them
        if the envelope cannot be read (only the log says so): they only let a backend
        validate what it has cached."""
        if not envelope_path:
            return ()
        try:
            envelope = read_envelope(envelope_path, str(self.manager.cwd))
        except RequestError as exc:
            LOGGER.warning("request sent without input digests: %s", exc)
            return ()
        inputs = []
        for path in envelope.inputs:
            digest = self.manager.digests.digest(os.path.join(self.manager.cwd, path))
            if digest is not None:
                inputs.append(WorkInput(path, digest.encode("ascii")))
        return tuple(inputs)

    def _goes_remote(self, prepared: PreparedRequest) -> bool:
        if self.config.routing != "auto":
            return True
        pool = self.manager.pool_for(self.manager.key_for(prepared.key_env))
        return not pool.has_free_slot()

    async def _run_remote(self, prepared: PreparedRequest, timeout_s: int) -> pb.ExecuteResponse:
        """Forwards the request through the Remote Execution API (in a thread: the REAPI
        client is blocking, with a deadline on every call). If this request is cancelled
        (a timeout, the runtime stopping), so is the remote operation."""
        from worker_runtime.buck2.race import remote_response
        from worker_runtime.remote.cancellation import Cancellation
        from worker_runtime.remote.forward import forward, in_remote_thread

        cancellation = Cancellation()
        try:
            result = await in_remote_thread(
                forward, self.manager, prepared.envelope, dict(prepared.key_env), timeout_s,
                cancellation,
            )  # fmt: skip
        except asyncio.CancelledError:
            threading.Thread(target=cancellation.cancel, name="cancel-remote").start()
            raise
        except RequestError:
            raise
        except Exception as exc:  # RemoteError, a missing input, a server fault
            LOGGER.warning("remote request failed: %s", exc)
            if not self.config.remote.get("fallback_local"):
                return self.error(f"remote execution failed: {exc}")
            response = await self._run_local(prepared, timeout_s)
            note = f"worker-runtime: note: remote execution failed ({exc}); ran locally instead\n"
            response.stderr = note + response.stderr
            return response
        return remote_response(result)

    async def _run_local(self, prepared: PreparedRequest, timeout_s: int) -> pb.ExecuteResponse:
        local = PreparedRequest(
            prepared.key_env, prepared.arguments, self.input_digests(prepared.envelope)
        )
        return await self._with_timeout(self._run(local), timeout_s)

    async def _with_timeout(
        self, work: Awaitable[pb.ExecuteResponse], timeout_s: int
    ) -> pb.ExecuteResponse:
        """``work``'s answer, or a timeout error once ``timeout_s`` (if > 0) has passed."""
        if timeout_s <= 0:
            return await work
        try:
            async with asyncio.timeout(timeout_s) as scope:
                return await work
        except TimeoutError:
            if not scope.expired():
                raise
        LOGGER.info("request timed out after %d s", timeout_s)
        return self.error(
            f"the request ran past its timeout of {timeout_s} s (counted from its arrival, "
            "waiting for a free backend included) and was cancelled; a backend that was "
            "running it was stopped, or asked to cancel if it is a cancellable multiplex one",
            timed_out_after_s=timeout_s,
        )

    async def _race(self, prepared: PreparedRequest, timeout_s: int) -> pb.ExecuteResponse:
        """Routing `race` (see race.py)."""
        from worker_runtime.buck2.race import Race

        race = Race(
            self.manager, prepared.envelope, dict(prepared.key_env), timeout_s,
            lambda: self._run_local(prepared, 0), self._leftovers,
        )  # fmt: skip
        return await race.run()

    async def _run(self, prepared: PreparedRequest) -> pb.ExecuteResponse:
        notes: list[str] = []
        attempt = 0
        while True:
            # The key is computed afresh for every attempt, just before the pool is picked
            # (no await in between): a retry never brings back a backend of tool files
            # that have changed since the request arrived.
            pool = self.manager.pool_for(self.manager.key_for(prepared.key_env))
            try:
                call = pool.call_retry if attempt else pool.call
                response = await call(prepared.arguments, prepared.inputs, self.config.verbosity)
            except BackendStartError as exc:
                return self.error(str(exc))
            except BackendError as exc:
                LOGGER.warning("request failed on its backend: %s", exc)
                if attempt >= self.config.retries:
                    retried = (
                        f"\n  the request had been retried {attempt} time(s) on a fresh backend"
                        if attempt
                        else ""
                    )
                    return self.error(f"{exc}{retried}")
                attempt += 1
                notes.append(
                    f"worker-runtime: note: {exc.summary}; the request was retried on a fresh "
                    f"backend process (retry {attempt} of {self.config.retries}).\n"
                )
                continue
            stderr = response.output
            for warning in response.warnings:
                notes.append(f"worker-runtime: warning: {warning}\n")
            if notes:
                stderr = "".join(notes) + stderr
            return pb.ExecuteResponse(exit_code=response.exit_code, stderr=stderr)
