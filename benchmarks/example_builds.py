"""Shared by the whole-example benchmarks (java_example, haskell_example): clean builds of
an example, cold (every compile the fallback process) and warm (every compile on the
worker through worker-runtime, in Buck2 commands after the first, which starts the
daemon), 2 at a time in dependency order; medians of the compile actions' time and of
the build's wall time."""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path
from typing import Any

from benchmarks.chart import redraw
from benchmarks.results import add_output_argument, emit
from benchmarks.scratch import scratch_dir
from worker_runtime.daemon.commands import private_daemon_dir
from workers_dev.build_runner import javac_worker, make_project
from workers_dev.demo_examples import Example, measure


def compare_builds(
    example: Example, rounds: int, warmup_commands: int, target_ratio: float
) -> dict[str, Any]:
    def timed(project: Path, worker: Any) -> tuple[float, float]:
        build = measure(example, project, worker, jobs=2)
        return build.wall_s, build.compile_s

    config = example.config()
    result: dict[str, Any] = {"target_ratio": target_ratio, "jobs": 2}
    with scratch_dir("example-bench-") as tmp:
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
                with javac_worker(project, config, [], name=example.worker_name) as worker:
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
    return result


def example_main(
    argv: list[str] | None,
    example: Example,
    *,
    description: str,
    result_name: str,
    target_ratio: float,
    warmup_commands: int,
) -> int:
    """The command line of an example benchmark: measures, writes the JSON result and
    redraws the chart."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=3, help="builds measured per mode")
    parser.add_argument(
        "--warmup-commands",
        type=int,
        default=warmup_commands,
        help=f"warm builds before measuring (default: {warmup_commands})",
    )
    add_output_argument(parser, result_name)
    args = parser.parse_args(argv)
    result = compare_builds(example, args.rounds, args.warmup_commands, target_ratio)
    emit(result, args.output)
    if args.output != "-":
        redraw()
    return 0
