"""Turns Buck2's ExecuteCommand into a backend request and the backend's answer into an
ExecuteResponse: argv decoding, @argfile expansion, the worker key, timeouts, retries.

Every failure becomes an ExecuteResponse with a clear stderr; nothing here raises to
the gRPC layer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from worker_runtime.backends.key import WorkerKey
from worker_runtime.backends.manager import BackendManager
from worker_runtime.errors import (
    RUNTIME_ERROR_EXIT_CODE,
    BackendError,
    BackendStartError,
    RequestError,
)
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.protocol.argfiles import expand_argfiles

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    key: WorkerKey
    arguments: tuple[str, ...]


class RequestHandler:
    """Serves one ExecuteCommand at a time per call; safe to call concurrently."""

    def __init__(self, manager: BackendManager, log_dir: Path) -> None:
        self.manager = manager
        self.config = manager.config
        self.runtime_log = log_dir / "runtime.log"
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        #: Requests whose client went away; they run on so that outputs are written and
        #: the backend stays warm and clean (held here: asyncio keeps tasks weakly).
        self._orphans: set[asyncio.Task[pb.ExecuteResponse]] = set()

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
        backend is returned to the pool clean and warm instead of being killed. Timeouts
        and explicit cancels (``Exec``) still cancel it."""
        task = asyncio.ensure_future(self.execute(command))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                LOGGER.info("client went away; the request runs on to completion")
                self._orphans.add(task)
                task.add_done_callback(self._orphans.discard)
            raise

    async def cancel_all(self) -> None:
        """Cancels requests whose clients went away (used when shutting down)."""
        orphans = list(self._orphans)
        for task in orphans:
            task.cancel()
        await asyncio.gather(*orphans, return_exceptions=True)

    async def execute(self, command: pb.ExecuteCommand) -> pb.ExecuteResponse:
        if self.draining:
            return self.error("the worker runtime is shutting down (it received SIGTERM)")
        self.in_flight += 1
        self._idle.clear()
        try:
            try:
                prepared = self.prepare(command)
            except RequestError as exc:
                LOGGER.info("bad request: %s", exc)
                return self.error(str(exc))
            if command.HasField("timeout_s") and command.timeout_s > 0:
                return await self._run_with_timeout(prepared, command.timeout_s)
            return await self._run(prepared)
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
        if self.config.key_env:
            wanted = set(self.config.key_env)
            found: dict[str, str] = {}
            for entry in command.env:
                name = entry.key.decode("utf-8", "replace")
                if name in wanted:
                    try:
                        found[name] = entry.value.decode("utf-8")
                    except UnicodeDecodeError:
                        raise RequestError(
                            f"environment variable {name} is not valid UTF-8"
                        ) from None
            key_env = tuple(sorted(found.items()))
        return PreparedRequest(self.manager.key_for(key_env), arguments)

    async def _run_with_timeout(
        self, prepared: PreparedRequest, timeout_s: int
    ) -> pb.ExecuteResponse:
        try:
            async with asyncio.timeout(timeout_s) as scope:
                return await self._run(prepared)
        except TimeoutError:
            if not scope.expired():
                raise
        LOGGER.info("request timed out after %d s (key %s)", timeout_s, prepared.key.short)
        return self.error(
            f"the request ran past its timeout of {timeout_s} s and was cancelled; the next "
            "request gets a fresh backend",
            timed_out_after_s=timeout_s,
        )

    async def _run(self, prepared: PreparedRequest) -> pb.ExecuteResponse:
        notes: list[str] = []
        attempt = 0
        while True:
            pool = self.manager.pool_for(prepared.key)
            try:
                call = pool.call_retry if attempt else pool.call
                response = await call(prepared.arguments, (), self.config.verbosity)
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
