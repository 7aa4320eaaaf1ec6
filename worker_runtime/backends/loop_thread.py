"""One asyncio event loop on a daemon thread, for threaded owners of backend processes
(the executor's lease threads): they drive the same ``BackendProcess`` as the runtime,
its pipes served by this loop, and block on the result."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs coroutines on its loop for callers on other threads. A backend started here
    dies with the process (its parent-death signal follows this thread, which lives as
    long as the process)."""

    _shared: LoopThread | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="backend-pipes", daemon=True
        )
        self.thread.start()

    @classmethod
    def shared(cls) -> LoopThread:
        with cls._lock:
            if cls._shared is None:
                cls._shared = LoopThread()
            return cls._shared

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs ``coroutine`` on the loop and returns (or raises) what it does."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("LoopThread.run called from its own loop: it would deadlock")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()
