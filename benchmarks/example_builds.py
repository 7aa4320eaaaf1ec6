"""Shared by the whole-example benchmarks (java_example, haskell_example): clean builds of
an example, cold (every compile the fallback process) and warm (every compile on the
worker through worker-runtime, in Buck2 commands after the first, which starts the
daemon), 2 at a time in dependency order; medians of the compile actions' time and of
the build's wall time."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker_runtime.daemon.commands import private_daemon_dir
from workers_dev.build_runner import BuildResult, javac_worker, make_project

BuildPackage = Callable[..., BuildResult]


def compare_builds(
    package: str,
    build: BuildPackage,
    config: dict[str, Any],
    worker_name: str,
    category: str,
    rounds: int,
    warmup_commands: int,
    target_ratio: float,
) -> dict[str, Any]:
    def timed(project: Path, worker: Any) -> tuple[float, float]:
        start = time.perf_counter()
        result = build(project, package, worker=worker, jobs=2)
        return time.perf_counter() - start, result.seconds(category)

    tmp = Path(tempfile.mkdtemp(prefix="example-bench-"))
    result: dict[str, Any] = {"target_ratio": target_ratio, "jobs": 2}
    try:
        cold = []
        for i in range(rounds):
            (tmp / f"cold{i}").mkdir()
            cold.append(timed(make_project(tmp / f"cold{i}"), None))
        warm: list[tuple[float, float]] = []
        (tmp / "warm").mkdir()
        project = make_project(tmp / "warm")  # one checkout, built again in every command
        with private_daemon_dir("wrx-"):
            # Each build is one Buck2 command with its own front; the daemon outlives them.
            for i in range(warmup_commands + rounds):
                shutil.rmtree(project / "buck-out", ignore_errors=True)
                with javac_worker(project, config, [], name=worker_name) as worker:
                    timing = timed(project, worker)
                if i >= warmup_commands:
                    warm.append(timing)
        for name, runs in (("cold", cold), ("warm", warm)):
            result[name] = {
                "build_wall_s": statistics.median(r[0] for r in runs),
                "compile_actions_s": statistics.median(r[1] for r in runs),
            }
        result["compile_ratio"] = (
            result["cold"]["compile_actions_s"] / result["warm"]["compile_actions_s"]
        )
        result["build_wall_ratio"] = result["cold"]["build_wall_s"] / result["warm"]["build_wall_s"]
        result["met"] = result["compile_ratio"] >= target_ratio
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
