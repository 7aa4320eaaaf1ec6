"""The runtime's own logs (worker_runtime/logs.py): old runs pruned but never a live
one's, each run's directory made fresh and private, its runtime.log 0600 after a
rollover too."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker_runtime.logs import private_directory, prune_old_runs


def test_old_runs_are_pruned_but_not_one_whose_process_still_runs(tmp_path: Path) -> None:
    """A daemon serving for weeks with no backend restarting adds no file to its run
    directory: its time said old, and another project's start removed it under it. A
    directory named for a pid that another process has taken since is pruned."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    old = time.time() - 30 * 86400
    live = f"daemon-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # this process's run
    names = (live, f"daemon-20260101-000000-{gone.pid}", f"daemon-20260101-000000-{os.getpid()}")
    for name in names:  # the last: a run of long ago whose pid this process took since
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (old, old))
    new = f"daemon-20261205-000000-{gone.pid}"
    (tmp_path / new).mkdir()  # new: kept, its pid gone
    prune_old_runs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, new])


@pytest.mark.needs_root("it gives a directory to another user")
def test_another_users_log_root_is_taken_only_if_others_cannot_write_to_it(
    tmp_path: Path,
) -> None:
    for mode, taken in ((0o777, False), (0o1777, True), (0o755, True)):
        root = tmp_path / f"root-{mode:o}"
        root.mkdir()
        os.chown(root, 65534, 65534)
        root.chmod(mode)
        if taken:
            private_directory(root)
        else:
            with pytest.raises(PermissionError, match="others may write to it"):
                private_directory(root)


SCRIPT = """
import logging, sys
from worker_runtime.logs import start_run_logging
run = start_run_logging(sys.argv[1], prefix="daemon-", cap_bytes=2000)
for n in range(200):
    logging.getLogger("t").info("line %d of what a daemon logs", n)
print(run)
"""


def test_a_run_directory_is_made_fresh_and_its_logs_stay_0600_past_a_rollover(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = Path(result.stdout.strip())
    assert run.stat().st_mode & 0o777 == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
    assert modes == {"runtime.log": 0o600, "runtime.log.1": 0o600}, modes
    # A directory of that name made before the run (a predictable name) is never taken.
    taken = subprocess.run(
        [sys.executable, "-c", PREMADE, str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert taken.returncode != 0 and "FileExistsError" in taken.stderr


PREMADE = """
import os, sys, time
from pathlib import Path
from worker_runtime.logs import start_run_logging
time.strftime = lambda *args: "20261205-000000"  # the name the run will take
name = "daemon-20261205-000000-" + str(os.getpid())
(Path(sys.argv[1]) / name).mkdir()
start_run_logging(sys.argv[1], prefix="daemon-")
"""
