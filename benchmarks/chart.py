"""The chart of docs/benchmarks.md: cold vs warm build time per example, drawn from the
examples' JSON results (benchmarks/results/java_example.json, haskell_example.json) into
docs/benchmarks/cold-vs-warm.png. The example benchmarks redraw it after each run; to
redraw it by hand: ``.venv/bin/python -m benchmarks.chart``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.results import RESULTS_DIR

CHART = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "cold-vs-warm.png"
EXAMPLES = (
    ("java_example", "Java (examples/java)"),
    ("haskell_example", "Haskell (examples/haskell)"),
)


def load(results_dir: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    found = {}
    for name, label in EXAMPLES:
        path = results_dir / f"{name}.json"
        if path.is_file():
            found[label] = json.loads(path.read_text())
    return found


def draw(results: dict[str, dict[str, Any]], png: Path = CHART) -> Path:
    """Two panels (compile actions, whole build), a cold and a warm bar per example, each
    warm bar labelled with how many times faster it is."""
    import matplotlib

    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    labels = list(results)
    figure, panels = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for panel, (key, title) in zip(
        panels,
        (
            ("compile_actions_s", "Compile actions (median, s)"),
            ("build_wall_s", "Whole build (median, s)"),
        ),
        strict=True,
    ):
        cold = [results[label]["cold"][key] for label in labels]
        warm = [results[label]["warm"][key] for label in labels]
        positions = range(len(labels))
        panel.bar(
            [p - 0.2 for p in positions],
            cold,
            width=0.4,
            label="cold (workers off)",
            color="#b0b0b0",
        )
        bars = panel.bar(
            [p + 0.2 for p in positions],
            warm,
            width=0.4,
            label="warm (workers on)",
            color="#2f6db5",
        )
        for bar, c, w in zip(bars, cold, warm, strict=True):
            panel.annotate(f"{c / w:.1f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                           ha="center", va="bottom", fontsize=9)  # fmt: skip
        panel.set_xticks(list(positions), labels)
        panel.set_title(title)
        panel.set_ylabel("seconds")
    panels[0].legend()
    figure.suptitle(
        "Cold vs warm, built as Buck2 would (benchmarks/java_example.py, haskell_example.py)"
    )
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(figure)
    return png


def redraw(results_dir: Path = RESULTS_DIR, png: Path = CHART) -> Path | None:
    results = load(results_dir)
    return draw(results, png) if results else None


if __name__ == "__main__":
    written = redraw()
    print(written or f"no example results in {RESULTS_DIR}: run benchmarks.java_example first")
    sys.exit(0 if written else 1)
