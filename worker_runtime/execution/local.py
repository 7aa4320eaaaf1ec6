"""Runs a request on a warm local backend: the pool of its worker key (backends/), with
the envelope's input digests (Bazel's WorkRequest.inputs) when the action has one.
Those digests and the tool inputs' are found on the event loop when none of it can wait
(execution/quick_reads.py: known to the digest cache, or small files hashed at once),
else in one hop off it."""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable

from worker_runtime.backends.manager import BackendManager
from worker_runtime.digests import DigestCache
from worker_runtime.envelope import read_envelope
from worker_runtime.errors import BackendError, BackendStartError, RequestError
from worker_runtime.execution.files import off_loop
from worker_runtime.execution.outcome import Failure, FailureKind, Outcome, Result, WorkRequest
from worker_runtime.execution.quick_reads import (
    MAX_QUICK_DIGESTS,
    MAX_QUICK_HASH_BYTES,
    QuickRoot,
    quick_root,
)
from worker_runtime.protocol.messages import WorkInput

LOGGER = logging.getLogger(__name__)

#: A request's input digests and its worker key's tool digests.
Digests = tuple[tuple[WorkInput, ...], tuple[tuple[str, str], ...]]


class LocalExecutor:
    """One attempt on one backend; retries are the Retry wrapper's."""

    def __init__(self, manager: BackendManager) -> None:
        self.manager = manager

    def capacity(self, request: WorkRequest) -> tuple[Hashable, int | None]:
        """What routing `auto` counts the request's local slots by, and how many of its
        requests run at once here (None: any number, a multiplex backend's). By its
        key_env values, not its whole worker key: the tool digests are read as a request
        runs (the first request's key is not known before), and a tool rebuilt within a
        command only makes its old and new requests share the count."""
        config = self.manager.config
        return request.key_env, None if config.multiplex else config.max_instances

    async def run(self, request: WorkRequest) -> Outcome:
        # The envelope, the input digests and the tool files' digests are file reads: on
        # the loop if none can wait, else off it (execution/files.py) in one hop.
        found = self.quick_digests(request)
        inputs, digests = found if found is not None else await off_loop(self.digests, request)
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

    def quick_digests(self, request: WorkRequest) -> Digests | None:
        """The request's digests if none of them can wait (quick_reads.py): each in the
        digest cache, or hashed at once, at most MAX_QUICK_HASH_BYTES of them; else None."""
        tools = self.manager.tools
        if not request.envelope and not tools.paths:
            return (), ()
        root = quick_root(self.manager.cwd)
        if root is None:
            return None
        paths: tuple[str, ...] = ()
        if request.envelope:
            envelope = root.envelope(request.envelope)
            if envelope is None:
                return None
            paths = envelope.inputs
        if len(paths) + len(tools.paths) > MAX_QUICK_DIGESTS:
            return None  # so many stats would hold the loop up longer than the hop
        budget = _HashBudget(root, self.manager.digests)
        inputs = []
        for path in paths:
            digest = budget.digest(path)
            if digest is None:
                return None
            inputs.append(WorkInput(path, digest.encode("ascii")))
        found = tools.known(budget.digest)
        return None if found is None else (tuple(inputs), found)

    def digests(self, request: WorkRequest) -> Digests:
        """The request's digests, read from the file system (off the loop)."""
        tools = self.manager.tools
        return self.input_digests(request.envelope), tools.current() if tools.paths else ()

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


class _HashBudget:
    """Quick digests for one request, hashing at most MAX_QUICK_HASH_BYTES in all."""

    def __init__(self, root: QuickRoot, digests: DigestCache) -> None:
        self._root = root
        self._digests = digests
        self._left = MAX_QUICK_HASH_BYTES

    def digest(self, path: str) -> str | None:
        found = self._root.digest(path, self._digests, self._left)
        if found is None:
            return None
        self._left -= found[1]
        return found[0]
