"""Private embedded engines for tests: `worker-runtime cluster` in a directory of their
own (not under pytest's 0700 tmp: as root, PostgreSQL runs as the postgres user), always
brought down at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO_ROOT, RUNTIME
from worker_runtime.cluster.layout import DEFAULT_BUILDGRID_VENV


def cluster(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`worker-runtime cluster ARGS`, from the repository root."""
    return subprocess.run(
        [*RUNTIME, "cluster", *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=180, env=env,
    )  # fmt: skip


@contextmanager
def private_cluster(*up_args: str, venv: Path = DEFAULT_BUILDGRID_VENV) -> Iterator[Path]:
    """A cluster directory; with ``up_args`` (e.g. "--executors", "2") the engine is up,
    on the BuildGrid of ``venv``."""
    assert (venv / "bin" / "bgd").exists(), (
        f"BuildGrid is missing: scripts/bootstrap.sh makes {venv.relative_to(REPO_ROOT)}"
    )
    env = {**os.environ, "WORKER_RUNTIME_BUILDGRID_VENV": str(venv)}
    directory = Path(tempfile.mkdtemp(prefix="wr-cluster-"))
    directory.chmod(0o755)
    try:
        if up_args:
            up = cluster("up", *up_args, "--dir", str(directory), env=env)
            assert up.returncode == 0, up.stderr
        yield directory
    finally:
        down = cluster("down", "--dir", str(directory), env=env)
        shutil.rmtree(directory, ignore_errors=True)
        assert down.returncode == 0, down.stderr


def executor_metrics(url: str) -> dict[str, float]:
    """One executor's Prometheus samples (its ``/metrics`` page): each sample line's name,
    labels included, and its value."""
    with urllib.request.urlopen(url, timeout=10) as page:
        text = page.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
