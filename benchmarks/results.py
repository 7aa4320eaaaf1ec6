"""Where and how a benchmark reports: its JSON result on stdout and in benchmarks/results/."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_output_argument(parser: argparse.ArgumentParser, name: str) -> None:
    default = RESULTS_DIR / f"{name}.json"
    parser.add_argument(
        "--output",
        default=str(default),
        help=f"JSON result file, or - for stdout only (default: {default})",
    )


def emit(result: dict[str, Any], output: str) -> None:
    text = json.dumps(result, indent=2) + "\n"
    if output != "-":
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
    sys.stdout.write(text)
