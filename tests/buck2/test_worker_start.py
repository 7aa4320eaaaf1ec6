"""The real Buck2's wait for each worker tool at the start of a command, as
benchmarks/buck2_worker_start.py reads it from Buck2's event log (no time is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.buck2.harness import REPO_ROOT


def test_every_command_starts_each_worker_tool_once_and_the_log_shows_it(buck2: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.buck2_worker_start", "--rounds", "1", "--output", "-"],
        cwd=REPO_ROOT,
        env={**os.environ, "BUCK2": buck2},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    tools = {"javac_worker", "ghc_worker"}
    assert set(figures["cold_daemon_ms"]) == tools
    for kind in ("after_an_edit", "clean_build"):
        assert [set(command) for command in figures[kind]["each_command_ms"]] == [tools]
        assert figures[kind]["starts"] == 2
        for starts in figures[kind]["each_command_ms"]:
            assert all(ms > 0 for ms in starts.values())
