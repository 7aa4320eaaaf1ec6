"""Routing `race`: one request run locally and remotely at once, the first real result
answering it, and the loser stopped on its own side without touching the winner's
outputs.

- The remote side first builds the Action and looks it up in the action cache. A hit
  answers at once and the local side never starts (a lost race kills a singleplex
  backend, so a warm one is not spent on a cached action). On a miss, or if the lookup
  takes longer than CACHE_WAIT_S, the local side starts.
- A runtime failure on one side (an unreachable server, a crashed backend, a refused
  action) is not a result: the other side's answer is awaited.
- The local backend writes its outputs in place. The remote side downloads its outputs
  beside their destinations and then claims the win; if it wins, it first stops the
  local side (a singleplex backend is killed and reaped, a cancellable multiplex one
  answers its cancel) and only then renames its outputs into place. A local winner
  cancels the remote operation on the server and the staged outputs are deleted.
- A race that is itself cancelled (a timeout, the runtime aborting) claims the win for
  nobody: neither side writes after that, and the local side is awaited until clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE, RequestError
from worker_runtime.proto import buck2_worker_pb2 as pb
from worker_runtime.remote.cancellation import Cancellation, RemoteCancelled
from worker_runtime.remote.forward import forward, in_remote_thread

if TYPE_CHECKING:
    from worker_runtime.backends.manager import BackendManager
    from worker_runtime.remote.client import RemoteResult

LOGGER = logging.getLogger(__name__)

#: How long the local side waits for the remote side's cache lookup before it starts.
CACHE_WAIT_S = 0.25


def remote_response(result: RemoteResult) -> pb.ExecuteResponse:
    return pb.ExecuteResponse(
        exit_code=result.exit_code,
        stderr=(result.stdout + result.stderr).decode("utf-8", "replace"),
    )


def is_result(response: pb.ExecuteResponse) -> bool:
    """Whether a local answer is the action's own result (success or failure) rather
    than the runtime's failure to run it."""
    return not (
        response.exit_code == RUNTIME_ERROR_EXIT_CODE
        and response.stderr.startswith("worker-runtime: error:")
    )


class Race:
    def __init__(
        self,
        manager: BackendManager,
        envelope: str,
        key_env: dict[str, str],
        timeout_s: int,
        run_local: Callable[[], Awaitable[pb.ExecuteResponse]],
        leftovers: set[asyncio.Future[RemoteResult]],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.run_local = run_local
        self.leftovers = leftovers
        self._referee = threading.Lock()
        self._winner = ""
        self.local: asyncio.Future[pb.ExecuteResponse] | None = None
        self.cancellation = Cancellation()
        self._missed = asyncio.Event()
        self.remote: asyncio.Future[RemoteResult] = in_remote_thread(
            forward, manager, envelope, key_env, timeout_s, self.cancellation,
            self._remote_may_write, self._cache_missed,
        )  # fmt: skip

    def _claim(self, side: str) -> bool:
        with self._referee:
            if not self._winner:
                self._winner = side
            return self._winner == side

    def _cache_missed(self) -> None:  # on the remote thread
        self.loop.call_soon_threadsafe(self._missed.set)

    def _remote_may_write(self) -> bool:  # on the remote thread, outputs staged
        if not self._claim("remote"):
            return False
        asyncio.run_coroutine_threadsafe(self._stop_local(), self.loop).result()
        return True

    def _start_local(self) -> asyncio.Future[pb.ExecuteResponse]:
        if self.local is None:
            self.local = asyncio.ensure_future(self.run_local())
        return self.local

    async def _stop_local(self) -> None:
        """Cancels the local side and returns once its backend no longer works on it."""
        if self.local is not None and not self.local.done():
            self.local.cancel()
            await asyncio.wait([self.local])

    def _leave_remote(self) -> None:
        """The remote thread ends by itself (cancelled, its staged outputs deleted)."""
        threading.Thread(target=self.cancellation.cancel, name="cancel-remote").start()
        self.leftovers.add(self.remote)
        self.remote.add_done_callback(self._forget)

    def _forget(self, future: asyncio.Future[RemoteResult]) -> None:
        self.leftovers.discard(future)
        if not future.cancelled() and future.exception() is not None:
            LOGGER.info("the losing remote side ended: %s", future.exception())

    async def run(self) -> pb.ExecuteResponse:
        try:
            return await self._run()
        except BaseException:  # cancelled (a timeout, an abort) or a bad request
            self._claim("nobody")  # neither side writes from now on
            self._leave_remote()
            if self.local is not None:
                self.local.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([self.local])
            raise

    async def _run(self) -> pb.ExecuteResponse:
        missed = asyncio.ensure_future(self._missed.wait())
        first: list[asyncio.Future[Any]] = [self.remote, missed]
        try:
            await asyncio.wait(first, timeout=CACHE_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            missed.cancel()
        if not self.remote.done():
            local = self._start_local()
            both: list[asyncio.Future[Any]] = [local, self.remote]
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if (
                local.done()
                and not local.cancelled()  # by the remote side, which won
                and local.exception() is None
                and is_result(local.result())
                and self._claim("local")
            ):
                LOGGER.info("race: the local side won; cancelling the remote side")
                self._leave_remote()
                return local.result()
        try:
            result = await self.remote
        except (RequestError, RemoteCancelled):
            raise
        except Exception as exc:  # remote unreachable, a server fault: local decides
            LOGGER.warning("race: the remote side failed (%s); waiting for the local side", exc)
            if self.local is not None and self.local.cancelled():
                self.local = None  # stopped by a remote win that then failed to write
            response = await self._start_local()
            response.stderr = (
                f"worker-runtime: note: the remote side of the race failed: {exc}\n"
                + response.stderr
            )
            return response
        LOGGER.info("race: the remote side won (%s)", result.worker or "action cache")
        return remote_response(result)
