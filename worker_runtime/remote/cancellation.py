"""Stopping a remote execution from another thread: the client's Execute (or
WaitExecution) stream is cancelled, and so is the operation on the server
(google.longrunning CancelOperation), so that no executor goes on running an action
nobody waits for. Used by routing `race` for the losing side, by the runtime when a
request is aborted, and by the client itself when it gives up on an operation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

LOGGER = logging.getLogger(__name__)


class RemoteCancelled(RuntimeError):
    """The remote execution was cancelled by this client; nothing was written."""


class _Call(Protocol):
    def cancel(self) -> bool: ...


class Cancellation:
    """One remote execution that any thread may cancel, at any point of its life."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._call: _Call | None = None
        self._operation = ""
        self._operation_cancelled = False
        self._cancel_operation: Callable[[str], None] | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def begin_write(self) -> bool:
        """Whether the outputs may be put in place: not once cancelled. After this
        answers True, a cancel comes too late to stop them."""
        with self._lock:
            return not self._cancelled

    def check(self) -> None:
        if self._cancelled:
            raise RemoteCancelled("the remote execution was cancelled")

    def bind(self, cancel_operation: Callable[[str], None]) -> None:
        """How to cancel an operation on the server (set by the client that runs it)."""
        with self._lock:
            self._cancel_operation = cancel_operation

    def follow(self, call: _Call) -> None:
        """The stream currently followed; cancelled at once if the execution already is."""
        with self._lock:
            self._call = call
            cancelled = self._cancelled
        if cancelled:
            call.cancel()

    def named(self, operation: str) -> None:
        """The server's name for the operation, from the first message of the stream. A
        new name (the action executed again) is a new operation, cancelled in its turn."""
        with self._lock:
            if operation != self._operation:
                self._operation_cancelled = False
            self._operation = operation
            cancelled = self._cancelled
        if cancelled:
            self.abandon()

    def cancel(self) -> None:
        """Stops following the execution and cancels it on the server (if it was named)."""
        with self._lock:
            self._cancelled = True
            call = self._call
        if call is not None:
            call.cancel()
        self.abandon()

    def abandon(self) -> None:
        """Cancels the operation on the server, once, best effort (the client is leaving
        it: cancelled, timed out, or failed to follow it)."""
        with self._lock:
            if self._operation_cancelled or not self._operation or not self._cancel_operation:
                return
            self._operation_cancelled = True
            operation, cancel = self._operation, self._cancel_operation
        try:
            cancel(operation)
            LOGGER.info("cancelled remote operation %s", operation)
        except Exception as exc:  # the server may be gone; the operation then dies with it
            LOGGER.warning("could not cancel remote operation %s: %s", operation, exc)
