"""benchmarks/buck2_worker_start.py's reading of Buck2's event log, on events shaped as
the real Buck2's ``buck2 log show`` prints them (tests/buck2 runs it on a real one)."""

from __future__ import annotations

import json
from typing import Any

from benchmarks.buck2_worker_start import (
    FLOOR_MS,
    TARGET_MS,
    poll_reached,
    summarize,
    worker_init_spans,
)

CONFIG = "buck-out/v2/art/toolchains/7e78021a0b275ce0/__javac_worker__/worker_runtime.json"


def event(span_id: int, data: dict[str, Any]) -> str:
    return json.dumps(
        {"Event": {"timestamp": [1, 0], "trace_id": "t", "span_id": span_id, "data": data}}
    )


def worker_init_start(span_id: int, argv: list[str]) -> str:
    stage = {"Local": {"stage": {"WorkerInit": {"command": {"argv": argv, "env": []}}}}}
    return event(span_id, {"SpanStart": {"data": {"ExecutorStage": {"stage": stage}}}})


def span_end(span_id: int, duration_us: int) -> str:
    return event(
        span_id,
        {"SpanEnd": {"stats": {}, "duration_us": duration_us, "data": {"ExecutorStage": {}}}},
    )


def test_each_worker_init_stage_is_read_with_its_tool_and_duration() -> None:
    launcher = ["toolchains/worker-runtime-launcher", ".venv/bin/worker-runtime", "serve"]
    local: dict[str, Any] = {"Local": {"stage": {"LocalExecute": {}}}}
    lines = [
        json.dumps({"command_line_args": ["buck2", "build"], "trace_id": "t"}),  # the header
        worker_init_start(97, [*launcher, "--config", CONFIG]),
        event(98, {"SpanStart": {"data": {"ExecutorStage": {"stage": local}}}}),
        span_end(98, 9_000),  # not a worker's start
        worker_init_start(99, ["my-worker", "--flag"]),
        span_end(97, 52_250),
        span_end(99, 153_500),
        worker_init_start(100, [*launcher, "--config", CONFIG]),  # never ended: left out
    ]
    assert worker_init_spans("\n".join(lines)) == [
        ("javac_worker", 52.25),
        ("my-worker --flag", 153.5),
    ]


def test_the_poll_a_start_reached_follows_buck2s_schedule() -> None:
    assert poll_reached(49.0) == 0
    assert poll_reached(52.3) == FLOOR_MS == 50
    assert poll_reached(153.9) == 150
    assert poll_reached(351.0) == 350


def test_a_summary_counts_the_starts_that_made_the_first_possible_poll() -> None:
    commands = [
        {"javac_worker": 52.0, "ghc_worker": 153.0},
        {"javac_worker": 51.0, "ghc_worker": 52.5},
        {"javac_worker": 154.0},
    ]
    summary = summarize(commands)
    assert summary["starts"] == 5
    assert summary["starts_at_the_first_possible_poll"] == 3
    assert summary["median_ms"] == 52.5
    assert TARGET_MS == 60 and summary["met"] is True
    javac = summary["tools"]["javac_worker"]
    assert javac["connect_polls_ms"] == [50, 50, 150]
    assert javac["median_ms"] == 52.0 and javac["max_ms"] == 154.0
    assert summarize([])["met"] is False
