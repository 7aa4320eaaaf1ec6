"""Benchmark: the whole Haskell example (examples/haskell: 17 modules, 4 targets), built as
Buck2 would, one compile action per module, 2 targets at a time in dependency order: cold
(every compile a ghc process, the fallback) vs. warm (every compile sent to the GHC worker
through worker-runtime, in the second and later Buck2 commands: the first one starts the
daemon and its GHC sessions). Archive and link steps run as processes in both.
Writes benchmarks/results/haskell_example.json.

Run: ``.venv/bin/python -m benchmarks.haskell_example``.
"""

from __future__ import annotations

import sys

from benchmarks.example_builds import example_main
from workers_dev.demo_examples import HASKELL

TARGET_RATIO = 3.0


def main(argv: list[str] | None = None) -> int:
    return example_main(
        argv, HASKELL, description=__doc__ or "", result_name="haskell_example",
        target_ratio=TARGET_RATIO, warmup_commands=1,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
