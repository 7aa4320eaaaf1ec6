"""Runs a request on a warm local backend: the pool of its worker key (backends/), with
the envelope's input digests (Bazel's WorkRequest.inputs) when the action has one."""

from __future__ import annotations

import logging
import os

from worker_runtime.backends.manager import BackendManager
from worker_runtime.envelope import read_envelope
from worker_runtime.errors import BackendError, BackendStartError, RequestError
from worker_runtime.execution.files import off_loop
from worker_runtime.execution.outcome import Failure, FailureKind, Outcome, Result, WorkRequest
from worker_runtime.protocol.messages import WorkInput

LOGGER = logging.getLogger(__name__)


class LocalExecutor:
    """One attempt on one backend; retries are the Retry wrapper's."""

    def __init__(self, manager: BackendManager) -> None:
        self.manager = manager

    def has_free_slot(self, request: WorkRequest) -> bool:
        """Whether the request would start at once on its key's pool (routing `auto`),
        by the tool digests last read (this must not wait on the file system)."""
        key = self.manager.key_for(request.key_env, self.manager.tools.last)
        pool = self.manager.pools.get(key)  # not pool_for: it would retire other keys' pools
        return pool is None or pool.has_free_slot()

    async def run(self, request: WorkRequest) -> Outcome:
        # Off the event loop (execution/files.py): the envelope, the input digests and the
        # tool files' digests are file reads.
        inputs = await off_loop(self.input_digests, request.envelope) if request.envelope else ()
        tools = self.manager.tools
        digests = await off_loop(tools.current) if tools.paths else ()
        # The key is computed afresh for every attempt, from digests taken just now: a
        # retry never brings back a backend of tool files that have changed since the
        # request arrived.
        pool = self.manager.pool_for(self.manager.key_for(request.key_env, digests))
        call = pool.call_retry if request.attempt else pool.call
        try:
            response = await call(request.arguments, inputs, self.manager.config.verbosity)
        except BackendStartError as exc:
            return Failure(FailureKind.START_FAILED, str(exc), exc.summary)
        except BackendError as exc:
            LOGGER.warning("request failed on its backend: %s", exc)
            return Failure(FailureKind.BACKEND_FAILED, str(exc), exc.summary)
        warnings = tuple(f"worker-runtime: warning: {w}\n" for w in response.warnings)
        return Result(response.exit_code, response.output, warnings)

    def input_digests(self, envelope_path: str) -> tuple[WorkInput, ...]:
        """The envelope's inputs with their digests. The request runs without them if the
        envelope cannot be read (only the log says so): they only let a backend validate
        what it has cached."""
        if not envelope_path:
            return ()
        cwd = self.manager.cwd
        try:
            envelope = read_envelope(envelope_path, cwd)
        except RequestError as exc:
            LOGGER.warning("request sent without input digests: %s", exc)
            return ()
        inputs = []
        for path in envelope.inputs:
            digest = self.manager.digests.digest(os.path.join(cwd, path))
            if digest is not None:
                inputs.append(WorkInput(path, digest.encode("ascii")))
        return tuple(inputs)
