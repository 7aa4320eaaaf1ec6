"""Request timeouts on one event-loop timer for all of them.

``asyncio.timeout(s)`` arms a loop timer per request and disarms it as the request ends:
several microseconds on every request, for timeouts that almost never fire (the default
is two hours). Here one timer, set for the earliest deadline of the requests running,
serves them all, and a request's start and end cost a dictionary insert and removal.
A scope behaves as ``asyncio.timeout``'s: when its time comes its task is cancelled,
and the ``CancelledError`` leaves the ``async with`` block as ``TimeoutError``; any other
cancellation of the task goes through untouched.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

#: How early a deadline may be taken as due: the loop's timers are this coarse.
_EARLY_S = 0.001


class Deadlines:
    """The timeouts of the requests running on one event loop."""

    def __init__(self) -> None:
        #: Each running scope, to the loop time it expires at.
        self._scopes: dict[DeadlineScope, float] = {}
        #: The one timer (uvloop's is a plain Handle when it is due at once) and its time.
        self._timer: asyncio.Handle | None = None
        self._timer_when = 0.0
        #: The loop the timer is on (a watcher may outlive an event loop, as in tests).
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._scopes)

    def timeout(self, delay_s: float) -> DeadlineScope:
        """An async context manager that cancels its task ``delay_s`` seconds after it is
        entered, and then raises ``TimeoutError`` from the block."""
        return DeadlineScope(self, delay_s)

    def _add(self, scope: DeadlineScope, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if loop is not self._loop:
            # A new event loop: the scopes left on the old one can never end there.
            self._scopes.clear()
            self._timer = None
            self._loop = loop
        self._scopes[scope] = when
        timer = self._timer
        if timer is None or when < self._timer_when:
            if timer is not None:
                timer.cancel()
            self._arm(loop, when)

    def _remove(self, scope: DeadlineScope) -> None:
        # The timer stays: if it fires with nothing due, it only sets itself again.
        self._scopes.pop(scope, None)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        # A timer may fire up to a millisecond early (uvloop counts in milliseconds).
        now = loop.time() + _EARLY_S
        for scope in [scope for scope, when in self._scopes.items() if when <= now]:
            del self._scopes[scope]
            scope.expire()
        if self._scopes:
            self._arm(loop, min(self._scopes.values()))

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer = loop.call_at(when, self._fire)
        self._timer_when = when


class DeadlineScope:
    """One ``async with deadlines.timeout(s)`` block."""

    __slots__ = ("_cancelling", "_deadlines", "_delay_s", "_expired", "_task")

    def __init__(self, deadlines: Deadlines, delay_s: float) -> None:
        self._deadlines = deadlines
        self._delay_s = delay_s
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False

    def expired(self) -> bool:
        """Whether the block's time ran out (its task was cancelled for it)."""
        return self._expired

    def expire(self) -> None:
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aenter__(self) -> DeadlineScope:
        if self._task is not None:
            raise RuntimeError("a deadline scope can be entered only once")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline scope must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        loop = task.get_loop()
        self._deadlines._add(self, loop, loop.time() + self._delay_s)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._deadlines._remove(self)
        if self._expired:
            assert self._task is not None
            # As asyncio.timeout: only the cancellation this scope made becomes a timeout.
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
