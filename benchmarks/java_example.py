"""Benchmark: the whole Java example (examples/java: 42 classes, 7 targets), built as Buck2
would, 2 targets at a time in dependency order: cold (every compile a javac process, the
fallback) vs. warm (every compile sent to the javac worker through worker-runtime, in the
second and later Buck2 commands: the first one starts the daemon and its JVM).
Jar steps run as processes in both. Writes benchmarks/results/java_example.json.

Run: ``.venv/bin/python -m benchmarks.java_example``.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.chart import redraw
from benchmarks.example_builds import compare_builds
from benchmarks.results import add_output_argument, emit
from workers_dev.build_runner import build_java_package, javac_worker_config

TARGET_RATIO = 4.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="builds measured per mode")
    parser.add_argument(
        "--warmup-commands", type=int, default=3, help="warm builds before measuring"
    )
    add_output_argument(parser, "java_example")
    args = parser.parse_args(argv)
    result = compare_builds(
        "examples/java", build_java_package, javac_worker_config(), "javac_worker", "javac",
        args.rounds, args.warmup_commands, TARGET_RATIO,
    )  # fmt: skip
    emit(result, args.output)
    if args.output != "-":
        redraw()
    return 0


if __name__ == "__main__":
    sys.exit(main())
