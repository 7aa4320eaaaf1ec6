"""Runs a request on a warm local backend: the pool of its worker key (backends/), with
the envelope's input digests (Bazel's WorkRequest.inputs) when the action has one."""

from __future__ import annotations

import logging
import os

from worker_runtime.backends.manager import BackendManager
from worker_runtime.envelope import read_envelope
from worker_runtime.errors import BackendError, BackendStartError, RequestError
from worker_runtime.execution.outcome import Failure, FailureKind, Outcome, Result, WorkRequest
from worker_runtime.protocol.messages import WorkInput

LOGGER = logging.getLogger(__name__)


class LocalExecutor:
    """One attempt on one backend; retries are the Retry wrapper's."""

    def __init__(self, manager: BackendManager) -> None:
        self.manager = manager

    def has_free_slot(self, request: WorkRequest) -> bool:
        """Whether the request would start at once on its key's pool (routing `auto`)."""
        return self.manager.pool_for(self.manager.key_for(request.key_env)).has_free_slot()

    async def run(self, request: WorkRequest) -> Outcome:
        inputs = self.input_digests(request.envelope)
        # The key is computed afresh for every attempt, just before the pool is picked (no
        # await in between): a retry never brings back a backend of tool files that have
        # changed since the request arrived.
        pool = self.manager.pool_for(self.manager.key_for(request.key_env))
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
