"""The benchmark chart is drawn from the examples' JSON results into a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.chart import redraw


def test_the_chart_is_a_png_drawn_from_the_results(tmp_path: Path) -> None:
    timing = {"compile_actions_s": 2.0, "build_wall_s": 3.0}
    warm = {"compile_actions_s": 0.5, "build_wall_s": 1.5}
    for name in ("java_example", "haskell_example"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"cold": timing, "warm": warm}))
    png = redraw(tmp_path, tmp_path / "chart.png")
    assert png is not None
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_no_results_no_chart(tmp_path: Path) -> None:
    assert redraw(tmp_path, tmp_path / "chart.png") is None
    assert not (tmp_path / "chart.png").exists()
