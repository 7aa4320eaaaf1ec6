"""How long the real Buck2 waits for each worker tool at the start of a command, read from
Buck2's own event log, with our daemon warm and, once, cold.

Buck2 starts a worker tool the first time a command needs it (and stops it at the end of
the command), then connects to its socket on a fixed schedule: at once, then after 50,
100, 200, 400 ms backoffs and 500 ms ones after that (``app/buck2_execute_impl/src/
executors/worker.rs``: ``initial_delay`` 50 ms, ``max_delay`` 500 ms). While it waits,
the action is in the ``WorkerInit`` stage, a span of the command's event log with its
duration in microseconds. Its floor is 50 ms: no process Buck2 has just spawned is
listening when the first connect is tried, so the earliest connect that can succeed is
the one after the first 50 ms backoff.

Each round is a command that starts every worker tool of the examples again, in one of
two ways: an **edit** (one source file of each example gets a new comment line, so its
compile runs again; Buck2's daemon is warm, as in an edit-and-rebuild loop), or a
**clean** build (``buck2 clean``, which also stops Buck2's daemon, then ``buck2 build``
of both examples, whose compiles all run: Buck2 itself is busiest at the start). Buck2
stops the fronts at the end of every command; our daemon stays up. The first command
runs with our daemon not started yet (cold: the front starts it); every later one finds
it warm, as every command after a project's first does. The runtime's bytecode is brought
up to date first, as an installed runtime's is (``front_start.compile_runtime``).

Usage: ``python -m benchmarks.buck2_worker_start [--rounds N] [--output F]`` (needs
``buck2`` on PATH or ``BUCK2=/path``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.buck2_builds import buck2_and_version
from benchmarks.front_start import compile_runtime
from benchmarks.results import add_output_argument, emit
from benchmarks.scratch import scratch_dir
from tests.buck2.harness import Buck2Project, copy_repository, private_dir

TARGETS = ("//examples/java:bookshop", "//examples/haskell:bookshop")
#: One source of each example, edited (a comment appended) to make its compile run again.
EDITED = {
    "examples/java/src/com/example/bookshop/app/Main.java": "// edit {}\n",
    "examples/haskell/Main.hs": "-- edit {}\n",
}
#: When Buck2 tries to connect, in ms after it spawned the worker (its backoffs summed).
CONNECT_POLLS_MS = (0, 50, 150, 350, 750, 1250)
#: The earliest poll a worker Buck2 has just spawned can answer.
FLOOR_MS = 50.0
TARGET_MS = 60.0


def worker_init_spans(events: str) -> list[tuple[str, float]]:
    """Each ``WorkerInit`` stage in ``buck2 log show``'s output (a JSON event per line) as
    (the worker tool's name, its duration in ms)."""
    started: dict[int, str] = {}
    spans: list[tuple[str, float]] = []
    for line in events.splitlines():
        if not line.startswith('{"Event"'):
            continue  # the command's header line
        event = json.loads(line)["Event"]
        data = event.get("data", {})
        start = data.get("SpanStart")
        if start is not None:
            stage = start["data"].get("ExecutorStage", {}).get("stage", {})
            init = stage.get("Local", {}).get("stage", {}).get("WorkerInit")
            if init is not None:
                started[event["span_id"]] = _worker_name(init.get("command", {}).get("argv", []))
            continue
        end = data.get("SpanEnd")
        if end is not None and event["span_id"] in started:
            spans.append((started.pop(event["span_id"]), end["duration_us"] / 1000))
    return spans


def _worker_name(argv: list[str]) -> str:
    """The worker_tool target's name, from the config file the prelude wrote for it
    (``buck-out/.../__javac_worker__/worker_runtime.json``); else the command itself."""
    if "--config" in argv[:-1]:
        config = argv[argv.index("--config") + 1]
        return config.rsplit("/", 2)[-2].strip("_") if config.count("/") >= 1 else config
    return " ".join(argv)


def poll_reached(duration_ms: float) -> float:
    """The last connect poll at or before ``duration_ms`` (the one that succeeded)."""
    return max(p for p in CONNECT_POLLS_MS if p <= duration_ms)


def command_starts(project: Buck2Project, how: str, round_no: int = 0) -> dict[str, float]:
    """One command that starts every worker tool, after an ``edit`` or a ``clean``: each
    tool's WorkerInit in ms."""
    if how == "clean":
        project.run("clean")
    else:
        for path, line in EDITED.items():
            with open(project.root / path, "a") as source:
                source.write(line.format(round_no))
    project.build(*TARGETS)
    spans = worker_init_spans(project.run("log", "show").stdout)
    starts: dict[str, float] = {}
    for name, duration_ms in spans:
        # A tool whose several actions waited on its one start: the first span is the start.
        starts.setdefault(name, duration_ms)
    return starts


def summarize(warm: list[dict[str, float]]) -> dict[str, Any]:
    """Each tool's starts with our daemon warm, against the floor and the target."""
    tools: dict[str, Any] = {}
    for name in sorted({n for r in warm for n in r}):
        durations = [r[name] for r in warm if name in r]
        median = statistics.median(durations) if durations else None
        tools[name] = {
            "median_ms": median,
            "max_ms": max(durations) if durations else None,
            "connect_polls_ms": [poll_reached(d) for d in durations],
            "median_over_floor_ms": median - FLOOR_MS if median is not None else None,
        }
    every = [d for r in warm for d in r.values()]
    return {
        "each_command_ms": warm,
        "tools": tools,
        "median_ms": statistics.median(every) if every else None,
        "starts": len(every),
        "starts_at_the_first_possible_poll": sum(poll_reached(d) == FLOOR_MS for d in every),
        "met": bool(every) and statistics.median(every) <= TARGET_MS,
    }


def measure(buck2: str, rounds: int, tmp: Path) -> dict[str, Any]:
    """``rounds`` commands after an edit, then ``rounds`` clean builds, on one project."""
    runtime_dir = private_dir("wrws-")
    project = Buck2Project.create(buck2, copy_repository(tmp / "repo"), runtime_dir)
    try:
        cold = command_starts(project, "clean")
        edits = [command_starts(project, "edit", n) for n in range(rounds)]
        cleans = [command_starts(project, "clean") for _ in range(rounds)]
    finally:
        project.stop()
        shutil.rmtree(runtime_dir, ignore_errors=True)
    return {
        "rounds": rounds,
        "floor_ms": FLOOR_MS,
        "target_ms": TARGET_MS,
        "cold_daemon_ms": cold,
        "after_an_edit": summarize(edits),
        "clean_build": summarize(cleans),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="commands of each kind")
    add_output_argument(parser, "buck2_worker_start")
    args = parser.parse_args(argv)
    found = buck2_and_version("buck2_worker_start")
    if found is None:
        return 2
    buck2, version = found
    compile_runtime()
    with scratch_dir("buck2-start-") as tmp:
        result = {"buck2": version, **measure(buck2, args.rounds, tmp)}
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
