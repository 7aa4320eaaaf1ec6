"""File reads a request needs (its @argfiles, its envelope and input digests, its tool
files' digests), run on a thread pool of their own so that the event loop never waits on
the file system: a FIFO, a huge file to hash or a hung network mount stalls only the
request that reads it, which its timeout then ends.
Reads that nothing can make wait (small @argfiles and envelopes, digests already known or
of small files in memory) are done on the loop instead (quick_reads.py).

A thread blocked in such a read stays blocked after its request timed out (a read cannot
be interrupted); the pool has ``MAX_THREADS`` threads, so reads of other requests go on
until that many are stuck at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

MAX_THREADS = 16

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(MAX_THREADS, "request-files")
    return _pool


async def off_loop(read: Callable[..., T], *args: object) -> T:
    """``read(*args)`` on the file pool; its exceptions are raised here."""
    return await asyncio.get_running_loop().run_in_executor(_threads(), read, *args)
