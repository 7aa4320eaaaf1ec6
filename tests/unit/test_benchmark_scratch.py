"""benchmarks/scratch.py: a benchmark's scratch directory is made as asked and always
removed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from benchmarks.scratch import scratch_dir


def test_the_directory_is_private_by_default_and_removed_after_the_block(tmp_path: Path) -> None:
    with scratch_dir("bench-", parent=str(tmp_path)) as path:
        assert path.parent == tmp_path and path.name.startswith("bench-")
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        (path / "sub").mkdir()
        (path / "sub" / "file").write_text("x")
    assert not path.exists()


def test_a_mode_is_applied_and_a_failure_still_removes_it(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError),
        scratch_dir("bench-", mode=0o755, parent=str(tmp_path)) as path,
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        raise RuntimeError("the benchmark failed")
    assert not path.exists()
