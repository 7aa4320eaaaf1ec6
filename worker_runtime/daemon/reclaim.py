"""Reclamation of backend processes: idle timeouts, a total memory budget and per-backend
memory limits, measured as the resident memory (psutil RSS) of each backend's process tree.

Rules, applied on every sweep:
1. a backend idle longer than its config's ``backend_idle_timeout_s`` is stopped;
2. a backend whose tree exceeds its config's ``backend_memory_limit_mb`` is recycled
   after its current request (at once if idle);
3. while the total exceeds the daemon's budget, idle backends are stopped, largest first.
Every action is logged with the numbers behind it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from worker_runtime.backends.manager import BackendManager
from worker_runtime.backends.pool import BackendPool
from worker_runtime.backends.process import BackendProcess

LOGGER = logging.getLogger(__name__)
MIB = 1 << 20


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 if it is gone)."""
    try:
        root = psutil.Process(pid)
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return 0


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

    def usage(self) -> list[BackendUsage]:
        found = []
        for manager in self.managers():
            for pool in manager.all_pools():
                for proc in list(pool.processes):
                    if proc.alive:
                        found.append(BackendUsage(manager, pool, proc, tree_rss(proc.pid)))
        return found

    def sweep(self) -> None:
        now = time.monotonic()
        usage = self.usage()
        alive = []
        for item in usage:
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
        for item in sorted(alive, key=lambda i: i.rss, reverse=True):
            if total <= self.budget_bytes:
                break
            if item.pool.stop_if_idle(
                item.proc,
                f"backends use {total / MIB:.0f} MiB in all, over memory_budget_mb = {budget_mib:.0f}; "
                f"this one is the largest idle one ({item.rss / MIB:.0f} MiB)",
            ):
                total -= item.rss
                self.evictions += 1
        if total > self.budget_bytes:
            LOGGER.warning(
                "backends use %.0f MiB, over the budget of %.0f MiB, and the rest are busy",
                total / MIB,
                budget_mib,
            )
        self.last_total = total
