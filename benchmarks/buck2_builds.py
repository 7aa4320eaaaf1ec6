"""Whole-build wall time of the examples under the real Buck2, workers off against workers on.

For each example (``examples/java``, ``examples/haskell``) two copies of this repository
are built with the same ``buck2``: one with ``-c persistent_workers.enabled=false`` (every
compile a cold process), one with workers on. Each round is a full rebuild: ``buck2 clean``
(which also stops Buck2's daemon), an untimed ``buck2 targets`` that starts Buck2's daemon
again, then a timed ``buck2 build`` in which every compile action runs again. With workers
on, one untimed build first starts our daemon and its backends, so every timed build is
"a second command with our daemon warm".

Per action, Buck2's own event log is read after each timed build (``buck2 log what-ran``:
which executor ran each action; ``buck2 log critical-path``: microsecond durations of the
actions on the critical path), and the median compile action is compared too.

Usage: ``python -m benchmarks.buck2_builds [--rounds N] [--only java|haskell] [--output F]``
(needs ``buck2`` on PATH or ``BUCK2=/path``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.results import add_output_argument, emit
from benchmarks.scratch import scratch_dir
from tests.buck2.harness import (
    Buck2Project,
    config_flags,
    copy_repository,
    find_buck2,
    private_dir,
)

EXAMPLES = {
    # name: (package, target, compile category, target ratio)
    "java": ("//examples/java", "//examples/java:bookshop", "javac", 4.0),
    "haskell": ("//examples/haskell", "//examples/haskell:bookshop", "haskell_compile", 3.0),
}
WORKERS_OFF = ("persistent_workers.enabled=false",)


def what_ran(project: Buck2Project) -> list[dict[str, Any]]:
    """The actions the last command ran, from Buck2's log (one JSON object per line)."""
    out = project.run("log", "what-ran", "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def critical_path(project: Buck2Project) -> list[dict[str, Any]]:
    out = project.run("log", "critical-path", "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def compile_durations_us(path: list[dict[str, Any]], category: str) -> list[int]:
    return [
        int(node["total_duration"])
        for node in path
        if node.get("category") == category and node.get("total_duration") is not None
    ]


def timed_rebuild(
    project: Buck2Project, package: str, target: str, config: tuple[str, ...], category: str
) -> dict[str, Any]:
    """One full rebuild of ``target``: clean, start Buck2's daemon, then the timed build."""
    flags = config_flags(config)
    project.run("clean")
    project.run("targets", *flags, f"{package}:")
    start = time.perf_counter()
    project.run("build", *flags, target)
    wall_s = time.perf_counter() - start
    ran = what_ran(project)
    executors: dict[str, int] = {}
    for action in ran:
        if category in str(action.get("identity", "")):
            kind = str(action.get("reproducer", {}).get("executor", "?"))
            executors[kind] = executors.get(kind, 0) + 1
    return {
        "wall_s": wall_s,
        "compile_actions_by_executor": executors,
        "critical_path_compiles_us": compile_durations_us(critical_path(project), category),
    }


def measure(buck2: str, name: str, rounds: int, tmp: Path) -> dict[str, Any]:
    package, target, category, target_ratio = EXAMPLES[name]
    sides: dict[str, list[dict[str, Any]]] = {}
    for side, config in (("workers_off", WORKERS_OFF), ("workers_on", ())):
        runtime_dir = private_dir("wrbb-")
        project = Buck2Project.create(buck2, copy_repository(tmp / f"{name}-{side}"), runtime_dir)
        try:
            # Untimed: the first build (workers on: starts our daemon and its backends).
            project.build(target, config=config)
            sides[side] = [
                timed_rebuild(project, package, target, config, category) for _ in range(rounds)
            ]
        finally:
            project.stop()
            shutil.rmtree(runtime_dir, ignore_errors=True)
    off = statistics.median(r["wall_s"] for r in sides["workers_off"])
    on = statistics.median(r["wall_s"] for r in sides["workers_on"])
    per_action: dict[str, float | None] = {}
    for side, runs in sides.items():
        durations = [d for r in runs for d in r["critical_path_compiles_us"]]
        per_action[side] = statistics.median(durations) / 1000 if durations else None
    action_ratio = (
        per_action["workers_off"] / per_action["workers_on"]
        if per_action["workers_off"] and per_action["workers_on"]
        else None
    )
    return {
        "target": target,
        "rounds": rounds,
        "build_wall_s": {"workers_off": off, "workers_on": on},
        "ratio": off / on,
        "target_ratio": target_ratio,
        "met": off / on >= target_ratio,
        "critical_path_compile_ms_median": per_action,
        "critical_path_compile_ratio": action_ratio,
        "runs": sides,
    }


def buck2_and_version(benchmark: str) -> tuple[str, str] | None:
    """The buck2 to measure with and what its ``--version`` says; None (said on stderr)
    when there is none."""
    buck2 = find_buck2()
    if buck2 is None:
        print(f"{benchmark}: no buck2 binary (put buck2 on PATH or set BUCK2=)", file=sys.stderr)
        return None
    version = subprocess.run(
        [buck2, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return buck2, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=sorted(EXAMPLES))
    add_output_argument(parser, "buck2_builds")
    args = parser.parse_args(argv)
    found = buck2_and_version("buck2_builds")
    if found is None:
        return 2
    buck2, version = found
    result: dict[str, Any] = {"buck2": version, "jobs": "buck2 default"}
    with scratch_dir("buck2-bench-") as tmp:
        for name in [args.only] if args.only else list(EXAMPLES):
            result[name] = measure(buck2, name, args.rounds, tmp)
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
