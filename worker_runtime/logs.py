"""Where the runtime and its backends log, and the set-up of the runtime's own log file.

Each runtime process gets a directory ``<log root>/<timestamp>-<pid>/`` (a daemon's:
``daemon-<timestamp>-<pid>/``) holding
``runtime.log`` and one ``backend-<tool>-<key>-<n>.log`` per backend process. Run
directories older than ``KEEP_DAYS`` are removed when a runtime starts.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import shutil
import time
from pathlib import Path

KEEP_DAYS = 7


def log_root(configured: str | None) -> Path:
    """The configured directory, else $WORKER_RUNTIME_LOG_DIR, else the XDG state dir."""
    if configured:
        return Path(configured)
    if os.environ.get("WORKER_RUNTIME_LOG_DIR"):
        return Path(os.environ["WORKER_RUNTIME_LOG_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "buck2-worker-runtime" / "logs"


def prune_old_runs(root: Path, keep_days: float = KEEP_DAYS) -> None:
    cutoff = time.time() - keep_days * 86400
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def start_run_logging(configured: str | None, verbose: bool = False, prefix: str = "") -> Path:
    """Creates this run's log directory, points the root logger at runtime.log, returns it."""
    root = log_root(configured)
    run_dir = root / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    prune_old_runs(root)
    handler = logging.FileHandler(run_dir / "runtime.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # The file is written by a thread of its own: a log line never makes the event loop
    # wait on the disk. The lines still queued are written at exit.
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.handlers.QueueListener(records, handler)
    writer.start()
    atexit.register(writer.stop)
    queued = logging.handlers.QueueHandler(records)
    queued.setFormatter(logging.Formatter("%(message)s"))  # the file's handler formats it
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[queued])
    return run_dir
