"""The options `cluster up` starts its executors with: each number as the executor's
own parser reads it back (an int written `1e+06` was refused by the executor, after
`up` had stopped the running set for it)."""

from __future__ import annotations

import pytest

from worker_runtime.cluster.commands import executor_options
from worker_runtime.executor.cli import main as executor_main


def test_limits_are_written_as_the_executor_reads_them() -> None:
    limits: dict[str, int | float | None] = {
        "--limit-memory": 1_000_000, "--limit-cpus": 1.2345678, "--limit-pids": None,
        "--limit-disk": 1_234_567,
    }  # fmt: skip
    options = executor_options(True, limits)
    assert options == [
        "--sandbox", "--limit-memory", "1000000", "--limit-cpus", "1.2345678",
        "--limit-disk", "1234567",
    ]  # fmt: skip
    assert executor_options(None, {"--limit-cpus": 1e-7}) == ["--limit-cpus", "1e-07"]


def test_the_executor_parses_what_up_writes(capsys: pytest.CaptureFixture[str]) -> None:
    """Through its real parser, with --help last: argparse converts each value as it
    reaches it, so the options before --help are read (a bad one fails first)."""
    options = executor_options(False, {"--limit-disk": 1_000_000, "--limit-cpus": 0.5})
    with pytest.raises(SystemExit) as parsed:
        executor_main(["--server", "unix:///x", "--workdir", "/tmp/x", *options, "--help"])
    assert parsed.value.code == 0
    with pytest.raises(SystemExit) as refused:
        executor_main(["--server", "unix:///x", "--workdir", "/tmp/x", "--limit-disk", "1e+06"])
    assert refused.value.code == 2 and "invalid int value: '1e+06'" in capsys.readouterr().err
