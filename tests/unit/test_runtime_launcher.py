"""toolchains/worker-runtime-launcher: what Buck2 starts as every worker. It runs the
configured worker-runtime, or says how to fix a missing one (Buck2 prints a worker's
stderr when it exits before connecting)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT

LAUNCHER = REPO_ROOT / "toolchains" / "worker-runtime-launcher"


def test_a_missing_runtime_names_the_setting_and_the_fixes() -> None:
    done = subprocess.run(
        [LAUNCHER, "/nonexistent/worker-runtime", "serve"], capture_output=True, text=True
    )
    assert done.returncode == 127 and done.stdout == ""
    assert "'/nonexistent/worker-runtime'" in done.stderr
    assert "[persistent_workers] runtime" in done.stderr
    assert "scripts/bootstrap.sh" in done.stderr and "enabled=false" in done.stderr


def test_the_runtime_gets_the_other_arguments(tmp_path: Path) -> None:
    runtime = tmp_path / "worker-runtime"
    runtime.write_text('#!/bin/sh\necho "$@"\n')
    runtime.chmod(0o755)
    done = subprocess.run([LAUNCHER, runtime, "serve", "--config", "a b"], capture_output=True)
    assert done.returncode == 0 and done.stdout == b"serve --config a b\n"
    on_path = subprocess.run(
        [LAUNCHER, "worker-runtime", "x"],
        capture_output=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
    )
    assert on_path.stdout == b"x\n"


def test_a_directory_is_not_a_runtime(tmp_path: Path) -> None:
    done = subprocess.run([LAUNCHER, tmp_path, "serve"], capture_output=True, text=True)
    assert done.returncode == 127 and "[persistent_workers] runtime" in done.stderr
