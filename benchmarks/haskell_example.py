"""Benchmark: the whole Haskell example (examples/haskell: 17 modules, 4 targets), built as
Buck2 would, one compile action per module, 2 targets at a time in dependency order: cold
(every compile a ghc process, the fallback) vs. warm (every compile sent to the GHC worker
through worker-runtime, in the second and later Buck2 commands: the first one starts the
daemon and its GHC sessions). Archive and link steps run as processes in both.
Writes benchmarks/results/haskell_example.json.

Run: ``.venv/bin/python -m benchmarks.haskell_example``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.results import add_output_argument, emit
from tests.starlark.build_runner import (
    build_haskell_package,
    ghc_worker_config,
    javac_worker,
    make_project,
)
from worker_runtime.daemon.commands import private_daemon_dir

TARGET_RATIO = 3.0


def timed_build(project: Path, worker: Any) -> tuple[float, float]:
    """A clean build of the example in ``project`` (whose buck-out holds no outputs)."""
    start = time.perf_counter()
    result = build_haskell_package(project, "examples/haskell", worker=worker, jobs=2)
    return time.perf_counter() - start, result.seconds("haskell_compile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="builds measured per mode")
    parser.add_argument(
        "--warmup-commands", type=int, default=1, help="warm builds before measuring"
    )
    add_output_argument(parser, "haskell_example")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="haskell-example-bench-"))
    result: dict[str, Any] = {"target_ratio": TARGET_RATIO, "jobs": 2}
    try:
        cold = []
        for i in range(args.rounds):
            (tmp / f"cold{i}").mkdir()
            cold.append(timed_build(make_project(tmp / f"cold{i}"), None))
        config = ghc_worker_config()
        warm: list[tuple[float, float]] = []
        (tmp / "warm").mkdir()
        project = make_project(tmp / "warm")  # one checkout, built again in every command
        with private_daemon_dir("wrh-"):
            # Each build is one Buck2 command with its own front; the daemon outlives them.
            for i in range(args.warmup_commands + args.rounds):
                shutil.rmtree(project / "buck-out", ignore_errors=True)
                with javac_worker(project, config, [], name="ghc_worker") as worker:
                    timing = timed_build(project, worker)
                if i >= args.warmup_commands:
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
        result["met"] = result["compile_ratio"] >= TARGET_RATIO
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
