"""The demo's Java and Haskell parts: examples/java and examples/haskell built from the
prelude's own analysis (build_runner: every target analysed with the fake Buck2 API, its
actions run as Buck2 runs them), three times: cold (every compile the tool's fallback
process, as with workers off), then two Buck2 commands through worker-runtime (the first
starts the daemon's backends, the second finds them warm)."""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers_dev.build_runner import (
    BuildResult,
    build_haskell_package,
    build_java_package,
    ghc_worker_config,
    javac_worker,
    javac_worker_config,
    make_project,
)

MODES = ("cold", "warm1", "warm2")


@dataclass(frozen=True)
class ExampleBuild:
    """One build of an example: its wall time and its compile actions' times."""

    wall_s: float
    action_median_ms: float
    compile_s: float
    actions: int


@dataclass(frozen=True)
class Example:
    package: str
    build: Callable[..., BuildResult]
    config: Callable[[], dict[str, Any]]
    worker_name: str
    #: The category of the compile actions (what the warm worker serves).
    category: str


JAVA = Example("examples/java", build_java_package, javac_worker_config, "javac_worker", "javac")
HASKELL = Example(
    "examples/haskell", build_haskell_package, ghc_worker_config, "ghc_worker", "haskell_compile"
)


def measure(example: Example, project: Path, worker: Any, jobs: int) -> ExampleBuild:
    start = time.perf_counter()
    result = example.build(project, example.package, worker=worker, jobs=jobs)
    wall = time.perf_counter() - start
    compiles = [s for c, s in result.action_seconds if c == example.category]
    if not compiles:
        raise RuntimeError(f"{example.package}: no {example.category} action ran")
    return ExampleBuild(wall, statistics.median(compiles) * 1000, sum(compiles), len(compiles))


def build_three_times(example: Example, root: Path, jobs: int) -> dict[str, ExampleBuild]:
    """Cold, then two warm Buck2 commands, each from a clean buck-out, in one project. The
    caller provides the daemon (the warm commands' backends live in it)."""
    root.mkdir(parents=True)
    project = make_project(root)
    config = example.config()
    results: dict[str, ExampleBuild] = {}
    for mode in MODES:
        shutil.rmtree(project / "buck-out", ignore_errors=True)
        if mode == "cold":
            results[mode] = measure(example, project, None, jobs)
        else:
            with javac_worker(project, config, [], name=example.worker_name) as worker:
                results[mode] = measure(example, project, worker, jobs)
        sys.stderr.write(f"  {mode:<28} {results[mode].wall_s:.2f} s\n")
    return results
