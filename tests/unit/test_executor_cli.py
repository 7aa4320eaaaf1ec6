"""`worker-runtime executor`'s command line refuses bad values before it connects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("grace", ["0", "-1"])
def test_a_cancel_grace_must_be_positive(tmp_path: Path, grace: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker_runtime", "executor", "--server", "unix:///nowhere",
         "--workdir", str(tmp_path), "--cancel-grace", grace],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--cancel-grace must be a number of seconds > 0" in result.stderr
