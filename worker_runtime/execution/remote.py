"""Runs a request through the Remote Execution API (remote/forward.py), on the remote
thread pool: the REAPI client blocks for a whole execution. Cancelling the caller cancels
the operation on the server; its thread then ends by itself, its staged outputs deleted
(unless it had begun to rename them into place: it then finishes the renames)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

from worker_runtime.backends.manager import BackendManager
from worker_runtime.envelope import ENVELOPE_ENV
from worker_runtime.errors import RequestError
from worker_runtime.execution.executor import Referee
from worker_runtime.execution.outcome import Failure, FailureKind, Outcome, Result, WorkRequest
from worker_runtime.remote.cancellation import Cancellation
from worker_runtime.remote.client import RemoteResult
from worker_runtime.remote.convention import UnsafePathError
from worker_runtime.remote.forward import QueuedPastTimeout, forward, in_remote_thread

LOGGER = logging.getLogger(__name__)

#: How long a remote thread waits for the race's answer to its claim, beyond the cancel
#: grace (stopping the local side takes at most that grace and a kill's wait, 10 s): past
#: it, the loop is not running.
CLAIM_TIMEOUT_S = 120.0


def remote_result(result: RemoteResult) -> Result:
    return Result(result.exit_code, (result.stdout + result.stderr).decode("utf-8", "replace"))


class RemoteExecutor:
    def __init__(self, manager: BackendManager) -> None:
        self.manager = manager
        #: Remote threads whose caller left (a lost race, a timeout), until they end:
        #: held here so that their end is logged, never garbage-collected mid-way.
        self._leftovers: set[asyncio.Future[RemoteResult]] = set()

    async def run(self, request: WorkRequest) -> Outcome:
        return await self._run(request, None, None)

    async def run_racing(self, request: WorkRequest, referee: Referee) -> Outcome:
        loop = asyncio.get_running_loop()
        claim_timeout_s = CLAIM_TIMEOUT_S + self.manager.config.cancel_grace_s
        unanswered: list[str] = []

        def may_write() -> bool:  # on the remote thread, outputs staged
            try:
                claim = asyncio.run_coroutine_threadsafe(referee.claim_for_remote(), loop)
                return claim.result(timeout=claim_timeout_s)
            except (RuntimeError, TimeoutError, concurrent.futures.CancelledError):
                # No answer: the loop is closed or stopping (the runtime is exiting), or
                # the answer did not come in time (the local side still stopping).
                LOGGER.info("the race's referee did not answer; remote outputs discarded")
                unanswered.append(
                    f"the race did not answer the remote side's claim within "
                    f"{claim_timeout_s:g} s (its local side still stopping?); the remote "
                    "outputs were discarded"
                )
                return False

        def cache_answered(hit: bool) -> None:  # on the remote thread
            loop.call_soon_threadsafe(referee.cache_answered, hit)

        outcome = await self._run(request, may_write, cache_answered)
        if unanswered and isinstance(outcome, Failure):
            return Failure(
                FailureKind.REMOTE_FAILED,
                f"remote execution failed: {unanswered[0]}",
                summary=unanswered[0],
            )
        return outcome

    async def _run(
        self,
        request: WorkRequest,
        may_write: Callable[[], bool] | None,
        cache_answered: Callable[[bool], None] | None,
    ) -> Outcome:
        if not request.envelope:
            return Failure(
                FailureKind.BAD_REQUEST,
                "routing `remote` needs the envelope worker_run attaches to each action "
                f"(${ENVELOPE_ENV}); this action has none: register it with worker_run",
            )
        cancellation = Cancellation()
        # The timeout counts from the request's arrival: a wait for a remote thread is
        # part of it.
        left = request.time_left()
        deadline = time.monotonic() + left if left is not None else None
        future = in_remote_thread(
            forward, self.manager, request.envelope, dict(request.key_env), request.timeout_s,
            cancellation, may_write, cache_answered, deadline,
        )  # fmt: skip
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            threading.Thread(target=cancellation.cancel, name="cancel-remote").start()
            self._leftovers.add(future)
            future.add_done_callback(self._forget)
            raise
        except (RequestError, UnsafePathError) as exc:  # no side would do better
            return Failure(FailureKind.BAD_REQUEST, str(exc))
        except QueuedPastTimeout as exc:
            return Failure(
                FailureKind.TIMED_OUT, f"the request timed out: {exc}",
                timed_out_after_s=request.timeout_s,
            )  # fmt: skip
        except Exception as exc:  # RemoteError, a missing input, a server fault
            if deadline is not None and time.monotonic() >= deadline:
                # Its Execute call was given what was left of the timeout, and ran out
                # (DEADLINE_EXCEEDED): a timeout, not a remote fault to fall back from.
                LOGGER.info("remote request timed out after %d s: %s", request.timeout_s, exc)
                return Failure(
                    FailureKind.TIMED_OUT,
                    f"the request ran past its timeout of {request.timeout_s} s (counted from "
                    "its arrival, any wait for a remote thread included) and its remote "
                    f"operation was cancelled: {exc}",
                    timed_out_after_s=request.timeout_s,
                )
            LOGGER.warning("remote request failed: %s", exc)
            return Failure(
                FailureKind.REMOTE_FAILED, f"remote execution failed: {exc}", summary=str(exc)
            )
        return remote_result(result)

    def _forget(self, future: asyncio.Future[RemoteResult]) -> None:
        self._leftovers.discard(future)
        if not future.cancelled() and future.exception() is not None:
            LOGGER.info("an abandoned remote execution ended: %s", future.exception())
