"""Reclamation of backend processes: idle timeouts, a total memory budget and per-backend
memory limits, measured as the resident memory (psutil RSS) of each backend's process tree.

Rules, applied on every sweep:
1. a backend idle longer than its config's ``backend_idle_timeout_s`` is stopped;
2. a backend whose tree exceeds its config's ``backend_memory_limit_mb`` is recycled
   after its current request (at once if idle);
3. while the total exceeds the daemon's budget, idle backends are stopped, largest first
   (eviction.py: the executor's workers follow the same policy).
Every action is logged with the numbers behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from worker_runtime.backends.manager import BackendManager
from worker_runtime.backends.pool import BackendPool
from worker_runtime.backends.process import BackendProcess
from worker_runtime.eviction import largest_first

LOGGER = logging.getLogger(__name__)
MIB = 1 << 20


def tree_rss(roots: list[int]) -> dict[int, int]:
    """Resident bytes of each root process and all its descendants (0 for a gone root).

    One pass over /proc for all roots (psutil's per-process ``children()`` would scan it
    once per backend). Slow with many processes: call it off the event loop."""
    rss: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["pid", "ppid", "memory_info"]):
        info = proc.info
        if info["memory_info"] is None:
            continue
        rss[info["pid"]] = info["memory_info"].rss
        children.setdefault(info["ppid"], []).append(info["pid"])
    totals = {}
    for root in roots:
        total, stack, seen = 0, [root], set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            total += rss.get(pid, 0)
            stack.extend(children.get(pid, ()))
        totals[root] = total
    return totals


def default_budget_bytes() -> int:
    return psutil.virtual_memory().total // 2


@dataclass
class BackendUsage:
    manager: BackendManager
    pool: BackendPool
    proc: BackendProcess
    rss: int


class Reclaimer:
    """Sweeps every backend of the daemon's managers; see the module docstring."""

    def __init__(self, managers: Callable[[], Iterable[BackendManager]], budget_bytes: int) -> None:
        self.managers = managers
        self.budget_bytes = budget_bytes
        self.last_total = 0
        self.evictions = 0

    async def usage(self) -> list[BackendUsage]:
        found = [
            (manager, pool, proc)
            for manager in self.managers()
            for pool in manager.all_pools()
            for proc in list(pool.processes)
            if proc.alive
        ]
        rss = await asyncio.to_thread(tree_rss, [proc.pid for _, _, proc in found])
        return [BackendUsage(m, pool, proc, rss.get(proc.pid, 0)) for m, pool, proc in found]

    async def sweep(self) -> None:
        usage = await self.usage()
        now = time.monotonic()
        alive = []
        for item in usage:
            if not item.proc.alive or item.proc not in item.pool.processes:
                continue  # went away while memory was being measured
            config = item.manager.config
            idle_s = now - item.proc.last_used
            idle_reason = f"idle for {idle_s:.0f} s (backend_idle_timeout_s = {config.backend_idle_timeout_s:g})"
            if idle_s > config.backend_idle_timeout_s and item.pool.stop_if_idle(
                item.proc, idle_reason
            ):
                continue
            limit = config.backend_memory_limit_mb
            if limit is not None and item.rss > limit * MIB:
                item.pool.recycle(
                    item.proc,
                    f"its processes use {item.rss / MIB:.0f} MiB, over backend_memory_limit_mb = {limit}",
                )
                if item.proc not in item.pool.processes:
                    continue
            alive.append(item)
        total = sum(item.rss for item in alive)
        self.last_total = total
        if total <= self.budget_bytes:
            return
        budget_mib = self.budget_bytes / MIB
        idle = [item for item in alive if item.proc.in_flight == 0]
        for item, rss in largest_first(idle, lambda i: i.rss, total, self.budget_bytes):
            if item.pool.stop_if_idle(
                item.proc,
                f"backends use {total / MIB:.0f} MiB in all, over memory_budget_mb = {budget_mib:.0f}; "
                f"this one is the largest idle one ({rss / MIB:.0f} MiB)",
            ):
                total -= rss
                self.evictions += 1
        if total > self.budget_bytes:
            LOGGER.warning(
                "backends use %.0f MiB, over the budget of %.0f MiB, and the rest are busy",
                total / MIB,
                budget_mib,
            )
        self.last_total = total
