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
import sys

from benchmarks.chart import redraw
from benchmarks.example_builds import compare_builds
from benchmarks.results import add_output_argument, emit
from workers_dev.build_runner import build_haskell_package, ghc_worker_config

TARGET_RATIO = 3.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="builds measured per mode")
    parser.add_argument(
        "--warmup-commands", type=int, default=1, help="warm builds before measuring"
    )
    add_output_argument(parser, "haskell_example")
    args = parser.parse_args(argv)
    result = compare_builds(
        "examples/haskell", build_haskell_package, ghc_worker_config(), "ghc_worker", "haskell_compile",
        args.rounds, args.warmup_commands, TARGET_RATIO,
    )  # fmt: skip
    emit(result, args.output)
    if args.output != "-":
        redraw()
    return 0


if __name__ == "__main__":
    sys.exit(main())
