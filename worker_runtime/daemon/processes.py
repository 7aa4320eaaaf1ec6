"""Small process-table helpers for the daemon and its commands (psutil; not for the front)."""

from __future__ import annotations

import psutil


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a dead process that its parent has not reaped yet)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
