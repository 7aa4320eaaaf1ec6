"""Benchmark: the whole Java example (examples/java: 42 classes, 7 targets), built as Buck2
would, 2 targets at a time in dependency order: cold (every compile a javac process, the
fallback) vs. warm (every compile sent to the javac worker through worker-runtime, in the
second and later Buck2 commands: the first one starts the daemon and its JVM).
Jar steps run as processes in both. Writes benchmarks/results/java_example.json.

Run: ``.venv/bin/python -m benchmarks.java_example``.
"""

from __future__ import annotations

import sys

from benchmarks.example_builds import example_main
from workers_dev.demo_examples import JAVA

TARGET_RATIO = 4.0


def main(argv: list[str] | None = None) -> int:
    return example_main(
        argv, JAVA, description=__doc__ or "", result_name="java_example",
        target_ratio=TARGET_RATIO, warmup_commands=3,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
