"""The embedded engine on BuildGrid 0.4.x with Python 3.11, the fallback where Python 3.13
is missing (scripts/bootstrap.sh makes .cache/buildgrid04-venv for these tests): the
cluster comes up in 0.4's config dialect and database, and requests run remotely on
warm workers, per tenant, with cancellation reaching the executor."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clusters import cluster, private_cluster
from tests.conftest import REPO_ROOT, is_gone, wait_gone
from tests.integration.test_remote import (
    copy_action,
    in_background,
    project,
    running_action,
    runtime,
)
from tests.worker_identity import host_pid, reported
from workers_dev.emulator import make_command

VENV = REPO_ROOT / ".cache" / "buildgrid04-venv"


@pytest.fixture(scope="module")
def engine() -> Iterator[Path]:
    """BuildGrid 0.4 with one executor for `main` and one for `tenant-b`."""
    with private_cluster("--executors", "2", venv=VENV) as directory:
        yield directory


def output_pid(root: Path, name: str) -> str:
    """Which worker process wrote the output (tests/worker_identity.py)."""
    return reported((root / "out" / f"{name}.txt").read_text())


def test_the_cluster_reports_buildgrid_0_4(engine: Path) -> None:
    env = {**os.environ, "WORKER_RUNTIME_BUILDGRID_VENV": str(VENV)}
    status = cluster("status", "--json", "--dir", str(engine), env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["buildgrid"]["version"].startswith("0.4.")


def test_requests_run_on_warm_remote_workers_per_tenant(tmp_path: Path, engine: Path) -> None:
    pids: dict[str, set[str]] = {}
    for instance in ("main", "tenant-b"):
        root = project(tmp_path / instance, engine, instance)
        (root / "src" / "a.txt").write_text(f"0.4 {instance} {tmp_path}\n")
        with runtime(root) as worker:
            for i in range(2):
                env = copy_action(root, f"q{i}")
                response = worker.execute(make_command([f"@q{i}.args"], env=env))
                assert response.exit_code == 0, response.stderr
        pids[instance] = {output_pid(root, f"q{i}") for i in range(2)}
    assert len(pids["main"]) == 1 and len(pids["tenant-b"]) == 1  # warm within a tenant
    assert pids["main"] != pids["tenant-b"]  # never across tenants


def test_a_race_the_local_side_wins_cancels_the_remote_action(tmp_path: Path, engine: Path) -> None:
    root = project(tmp_path, engine)
    config = json.loads((root / "worker.json").read_text())
    config["routing"] = "race"
    (root / "worker.json").write_text(json.dumps(config))
    (root / "src" / "a.txt").write_text(f"0.4 race {tmp_path}\n")
    earlier = set(engine.glob("executors/*/actions/*/started.txt"))
    with runtime(root) as worker:
        env = copy_action(
            root, "r", "--sleep-if", "remote", "300", "--wait-if", "local", "go-local"
        )
        pending = in_background(worker, "r.args", env)
        executor, remote = running_action(engine, earlier)
        remote_pid = host_pid(remote)
        (root / "go-local").touch()
        response = pending.result(timeout=60)
    assert response.exit_code == 0, response.stderr
    assert output_pid(root, "r") == (root / "started.txt").read_text()  # local's
    assert wait_gone([remote_pid], 30) == []
    assert not is_gone(executor)
