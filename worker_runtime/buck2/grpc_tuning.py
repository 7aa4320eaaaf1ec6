"""Process-wide settings that make grpcio fast for a worker on a Unix socket.

Measured on a 2-core machine (benchmarks/runtime_overhead.py): grpcio's newer
"event engine" adds thread hand-offs on every call; switching it off with the
``GRPC_EXPERIMENTS`` variable cuts the latency of a unary call by about a third, and
uvloop cuts it further. Both must be settled before grpc is imported. A user who sets
``GRPC_EXPERIMENTS`` themselves keeps their value; ``WORKER_RUNTIME_NO_UVLOOP=1``
keeps the default asyncio loop. Forking is never done by grpc here (backends are
spawned without ``preexec_fn``), so its fork handlers are off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: grpcio experiments switched off: an internal switch, verified with the grpcio the
#: project pins; if a later grpcio drops these names they are ignored.
EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def apply() -> None:
    if "grpc" in sys.modules:
        return  # too late to matter; keep whatever the process already has
    os.environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop where available."""
    import asyncio  # here, not at the top: the front imports this package and must start fast

    if os.environ.get("WORKER_RUNTIME_NO_UVLOOP") != "1":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
