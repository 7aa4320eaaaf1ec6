"""Benchmark: Buck2's own remote persistent workers (routing native) on the embedded engine.

One engine (`worker-runtime cluster up`, one executor, instance main) and three copies of
this repository built by the real Buck2. Each round is a full rebuild of ``examples/java``
with Buck2's remote action cache off (``--no-remote-cache``), so every action executes:

- ``native_warm``: routing native, workers on. Buck2's RE client sends each javac action
  to a warm remote persistent worker on our executor.
- ``native_oneshot``: routing native, workers off. Each javac action is a plain remote
  action on the same engine (the javac worker's one-shot mode: a JVM per action). The
  baseline of the warm/one-shot ratio (target: at least 4x on the compile actions).
- ``forwarded``: routing remote. Buck2 runs each javac action on worker-runtime locally,
  which forwards it over REAPI (its own client) to the same engine and executor.

Per compile action: Buck2's own duration (``buck2 log critical-path``), and from Buck2's
event log (``buck2 log show``) the time of each of its stages: ``ReUpload`` (finding which
inputs the CAS lacks), ``re_queue`` (from Execute to the executor taking it),
``re_execute`` (the executor's run, input fetch and output upload included),
``re_download``; the executors' own mean time per action (their metrics) beside it.
Every side gets one untimed build first (Buck2's daemon, our daemon, the workers).

Usage: ``python -m benchmarks.native_remote [--rounds N] [--output F]`` (needs ``buck2`` on
PATH or ``BUCK2=/path``, and the BuildGrid virtualenv that scripts/bootstrap.sh makes).
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

from benchmarks.buck2_builds import (
    buck2_and_version,
    compile_durations_us,
    critical_path,
    what_ran,
)
from benchmarks.results import add_output_argument, emit
from benchmarks.scratch import scratch_dir
from tests.buck2.harness import Buck2Project, copy_repository, private_dir
from tests.clusters import executor_metrics
from worker_runtime.cluster.commands import buckconfig_section

RUNTIME = [sys.executable, "-m", "worker_runtime"]
PACKAGE, TARGET, CATEGORY = "//examples/java", "//examples/java:bookshop", "javac"
TARGET_RATIO = 4.0


def cluster(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNTIME, "cluster", *args, "--dir", str(directory)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def executor_seconds(status: dict[str, Any]) -> tuple[float, float]:
    """(sum, count) of the executors' execution-time histogram."""
    total, count = 0.0, 0.0
    for executor in status["executors"]:
        samples = executor_metrics(executor["metrics"])
        total += samples.get("executor_execution_seconds_sum", 0.0)
        count += samples.get("executor_execution_seconds_count", 0.0)
    return total, count


def stage_name(data: dict[str, Any]) -> str:
    """A span's name: its kind, and for an executor stage the stage (re_execute, ...)."""
    kind = next(iter(data), "?")
    if kind != "ExecutorStage":
        return str(kind)
    stage = data[kind].get("stage", {})
    name = next(iter(stage), "?")
    inner = stage.get(name, {}).get("stage") if isinstance(stage.get(name), dict) else None
    return f"{name.lower()}_{next(iter(inner)).lower()}" if inner else name.lower()


def compile_stages_ms(project: Buck2Project) -> list[dict[str, float]]:
    """Per compile action of the last command, from Buck2's event log: its total time and
    the time of each of its stages (upload, queue, execute, download...), in ms."""
    shown = project.run("log", "show").stdout
    starts: dict[int, tuple[int, dict[str, Any]]] = {}
    durations: dict[int, int] = {}
    for line in shown.splitlines():
        try:
            event = json.loads(line).get("Event", {})
        except json.JSONDecodeError:
            continue
        data = event.get("data", {})
        if "SpanStart" in data:
            starts[event["span_id"]] = (event["parent_id"], data["SpanStart"].get("data", {}))
        elif "SpanEnd" in data:
            durations[event["span_id"]] = int(data["SpanEnd"]["duration_us"])
    actions = []
    for span, (_, data) in starts.items():
        name = data.get("ActionExecution", {}).get("name", {})
        if name.get("category") != CATEGORY or span not in durations:
            continue
        stages: dict[str, float] = {"total": durations[span] / 1000}
        for child, (parent, child_data) in starts.items():
            if parent == span and child in durations:
                label = stage_name(child_data)
                stages[label] = stages.get(label, 0.0) + durations[child] / 1000
        actions.append(stages)
    return actions


def side_settings(side: str, engine: Path, re_client: str) -> tuple[str, tuple[str, ...]]:
    """(text appended to .buckconfig, extra `-c` flags) of one side."""
    if side == "forwarded":
        return (
            "",
            (
                "persistent_workers.routing=remote",
                f"persistent_workers.remote_endpoint=unix://{engine}/run/buildgrid.sock",
                "persistent_workers.remote_instance_name=main",
                "persistent_workers.remote_cache=false",
            ),
        )
    flags: tuple[str, ...] = ("persistent_workers.routing=native",)
    if side == "native_oneshot":
        flags += ("persistent_workers.enabled=false",)
    return "\n" + re_client, flags


def timed_build(project: Buck2Project, flags: list[str], engine: Path) -> dict[str, Any]:
    project.run("clean")
    project.run("targets", *flags, f"{PACKAGE}:")
    before = executor_seconds(json.loads(cluster(engine, "status", "--json").stdout))
    start = time.perf_counter()
    project.run("build", *flags, TARGET, "--no-remote-cache")
    wall_s = time.perf_counter() - start
    after = executor_seconds(json.loads(cluster(engine, "status", "--json").stdout))
    executed = after[1] - before[1]
    executors: dict[str, int] = {}
    for action in what_ran(project):
        if CATEGORY in str(action.get("identity", "")):
            kind = str(action.get("reproducer", {}).get("executor", "?"))
            executors[kind] = executors.get(kind, 0) + 1
    return {
        "wall_s": wall_s,
        "compile_stages_ms": compile_stages_ms(project),
        "compile_actions_by_executor": executors,
        "critical_path_compiles_us": compile_durations_us(critical_path(project), CATEGORY),
        "executor_actions": executed,
        "executor_ms_per_action": (after[0] - before[0]) / executed * 1000 if executed else None,
    }


def measure_side(
    buck2: str, side: str, engine: Path, re_client: str, rounds: int, tmp: Path
) -> list[dict[str, Any]]:
    appended, config = side_settings(side, engine, re_client)
    runtime_dir = private_dir("wrnr-")
    project = Buck2Project.create(buck2, copy_repository(tmp / side), runtime_dir)
    (project.root / ".buckconfig").write_text((project.root / ".buckconfig").read_text() + appended)
    flags = [flag for setting in config for flag in ("-c", setting)]
    try:
        project.run("build", *flags, TARGET)  # untimed: daemons, workers, the worker built
        return [timed_build(project, flags, engine) for _ in range(rounds)]
    finally:
        project.stop()
        shutil.rmtree(runtime_dir, ignore_errors=True)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    compiles = [d / 1000 for r in runs for d in r["critical_path_compiles_us"]]
    executor = [r["executor_ms_per_action"] for r in runs if r["executor_ms_per_action"]]
    compile_ms = statistics.median(compiles) if compiles else None
    # The executor's time is the mean over every action of the build (jar ones too).
    executor_ms = statistics.median(executor) if executor else None
    stages: dict[str, list[float]] = {}
    for run in runs:
        for action in run["compile_stages_ms"]:
            for name, ms in action.items():
                stages.setdefault(name, []).append(ms)
    return {
        "build_wall_s": statistics.median(r["wall_s"] for r in runs),
        "compile_ms_median": compile_ms,
        "compile_stage_ms_median": {name: statistics.median(v) for name, v in stages.items()},
        "executor_ms_per_action": executor_ms,
    }


def measure(buck2: str, rounds: int, tmp: Path) -> dict[str, Any]:
    engine = tmp / "engine"
    engine.mkdir(mode=0o755)
    engine.chmod(0o755)  # PostgreSQL runs as its own user
    sides: dict[str, list[dict[str, Any]]] = {}
    try:
        cluster(engine, "up", "--executors", "1")
        settings = json.loads(cluster(engine, "status", "--json").stdout)["buck2_re_client"]
        re_client = buckconfig_section(settings)
        for side in ("native_warm", "native_oneshot", "forwarded"):
            sides[side] = measure_side(buck2, side, engine, re_client, rounds, tmp)
    finally:
        subprocess.run([*RUNTIME, "cluster", "down", "--dir", str(engine)], capture_output=True)
    summaries = {side: summary(runs) for side, runs in sides.items()}
    warm = summaries["native_warm"]["compile_ms_median"]
    oneshot = summaries["native_oneshot"]["compile_ms_median"]
    forwarded = summaries["forwarded"]["compile_ms_median"]
    ratio = oneshot / warm if warm and oneshot else None
    execute = {
        side: summaries[side]["compile_stage_ms_median"].get("re_execute")
        for side in ("native_warm", "native_oneshot")
    }
    warm_execute, oneshot_execute = execute["native_warm"], execute["native_oneshot"]
    return {
        "target": TARGET,
        "rounds": rounds,
        "executors": 1,
        "sides": summaries,
        "compile_ratio_oneshot_over_warm": ratio,
        "target_ratio": TARGET_RATIO,
        "met": ratio is not None and ratio >= TARGET_RATIO,
        "re_execute_ratio_oneshot_over_warm": (
            oneshot_execute / warm_execute if warm_execute and oneshot_execute else None
        ),
        "compile_ms_native_minus_forwarded": warm - forwarded if warm and forwarded else None,
        "runs": sides,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    add_output_argument(parser, "native_remote")
    args = parser.parse_args(argv)
    found = buck2_and_version("native_remote")
    if found is None:
        return 2
    buck2, version = found
    with scratch_dir("native-bench-", mode=0o755, parent="/tmp") as tmp:
        result = {"buck2": version, **measure(buck2, args.rounds, tmp)}
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
