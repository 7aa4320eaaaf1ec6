"""Benchmark: one per-module compile action, cold (`ghc -c`, as Buck2 runs it without
workers) vs. warm (the same action sent through worker-runtime to the GHC worker, with the
envelope's input digests as Buck2 sends them), for every module of examples/haskell.
Writes benchmarks/results/ghc_worker.json.

Run: ``.venv/bin/python -m benchmarks.ghc_worker``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.results import add_output_argument, emit
from benchmarks.scratch import scratch_dir
from workers_dev.build_runner import build_haskell_package, ghc_worker_config, make_project
from workers_dev.emulator import Buck2Worker, make_command

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 5.0


def compile_actions(project: Path) -> list[dict[str, Any]]:
    """Every per-module compile of the example, its dependencies built (cold) first."""
    built = build_haskell_package(project, "examples/haskell", worker=None)
    return [
        action
        for analysis in built.analyses.values()
        for action in analysis.actions
        if action.get("category") == "haskell_compile"
    ]


def remove_outputs(project: Path, action: dict[str, Any]) -> None:
    """Buck2 deletes an action's outputs before running it (GHC would otherwise find them
    up to date and skip the compile)."""
    for output in action["outputs"]:
        (project / output).unlink(missing_ok=True)


def time_cold(project: Path, action: dict[str, Any]) -> float:
    remove_outputs(project, action)
    start = time.perf_counter()
    subprocess.run([*action["fallback"], *action["arguments"]], cwd=project, check=True)
    return (time.perf_counter() - start) * 1000


def time_warm(project: Path, worker: Buck2Worker, action: dict[str, Any]) -> float:
    remove_outputs(project, action)
    start = time.perf_counter()
    response = worker.execute(make_command(action["arguments"], env=action["env"]))
    elapsed = (time.perf_counter() - start) * 1000
    if response.exit_code != 0:
        raise RuntimeError(response.stderr)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed compiles per module and mode")
    parser.add_argument("--warmup", type=int, default=2, help="warm passes before timing")
    add_output_argument(parser, "ghc_worker")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"target_ratio": TARGET_RATIO}
    with scratch_dir("ghc-bench-") as tmp:
        project = make_project(tmp)
        actions = compile_actions(project)
        cold = {a["identifier"]: [time_cold(project, a) for _ in range(args.runs)] for a in actions}
        config_path = project / "buck-out" / "ghc_worker.json"
        config_path.write_text(json.dumps(ghc_worker_config()))
        runtime = [sys.executable, "-m", "worker_runtime", "serve", "--no-daemon"]
        with Buck2Worker([*runtime, "--config", str(config_path)], project_root=project) as worker:
            for _ in range(args.warmup):
                for action in actions:
                    time_warm(project, worker, action)
            warm = {
                a["identifier"]: [time_warm(project, worker, a) for _ in range(args.runs)]
                for a in actions
            }
        modules = {
            name: {
                "cold_ms": statistics.median(cold[name]),
                "warm_ms": statistics.median(warm[name]),
            }
            for name in cold
        }
        for entry in modules.values():
            entry["ratio"] = entry["cold_ms"] / entry["warm_ms"]
        result["modules"] = modules
        result["median_cold_ms"] = statistics.median(m["cold_ms"] for m in modules.values())
        result["median_warm_ms"] = statistics.median(m["warm_ms"] for m in modules.values())
        result["ratio"] = result["median_cold_ms"] / result["median_warm_ms"]
        result["min_module_ratio"] = min(m["ratio"] for m in modules.values())
        result["met"] = result["ratio"] >= TARGET_RATIO
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
