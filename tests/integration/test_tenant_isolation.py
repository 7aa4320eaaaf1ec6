"""Tenants apart at the operating-system level on the executor (issue 17, first part):
as root with a uid range, each tenant's actions and workers run under a uid of its own
with no supplementary groups, in directories that are its own and private. A hostile
tenant, end to end through BuildGrid, cannot read or change another tenant's worker
files or action directories, signal its worker or read its environment, or reach the
executor's own files and environment."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clusters import private_cluster
from tests.integration.test_remote import action, copy_action, project, runtime
from worker_runtime.cluster.commands import TENANT_UID_RANGE
from worker_runtime.executor.tenants import parse_uid_range
from workers_dev.emulator import make_command

pytestmark = pytest.mark.skipif(
    os.getuid() != 0, reason="needs root: the executor switches each tenant to its own uid"
)
UIDS = parse_uid_range(TENANT_UID_RANGE)


@pytest.fixture(scope="module")
def engine() -> Iterator[Path]:
    """BuildGrid with one executor for instance main and one for tenant-b."""
    with private_cluster("--executors", "2") as directory:
        yield directory


def owner_and_mode(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_uid, status.st_mode & 0o777


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_a_hostile_tenant_cannot_reach_another_tenant_or_the_executor(
    tmp_path: Path, engine: Path
) -> None:
    # Tenant A (main) has a warm worker, with its tool files in its worker home.
    victim = project(tmp_path / "a", engine, "main")
    with runtime(victim) as worker:
        response = worker.execute(make_command(["@w.args"], env=copy_action(victim, "w")))
        assert response.exit_code == 0, response.stderr
    victim_pid = int((victim / "out" / "w.txt").read_text().split("pid=")[1])
    executor_a = engine / "executors" / "executor-0-main"
    homes = list((executor_a / "workers" / "main").iterdir())
    tool = next(h / "tools" / "worker.py" for h in homes if (h / "tools").is_dir())
    state = json.loads((engine / "state.json").read_text())
    executor_pid = int(state["executor_pids"][0])

    # A's processes and directories are A's own, private, and not root's.
    a_uid = uid_of(victim_pid)
    assert a_uid in UIDS
    assert owner_and_mode(executor_a / "workers" / "main") == (0, 0o711)
    assert owner_and_mode(tool.parent.parent) == (a_uid, 0o700)  # the worker's home
    assert owner_and_mode(tool) == (0, 0o644)  # read, never changed
    assert owner_and_mode(executor_a) == (0, 0o711)
    assert owner_and_mode(executor_a / "blobs") == (0, 0o700)

    # Tenant B's worker probes all of it.
    targets = [
        f"read:{tool}", f"write:{tool}", f"list:{tool.parent}", f"list:{executor_a / 'workers'}",
        f"list:{executor_a / 'workers' / 'main'}", f"list:{executor_a / 'worker-logs'}",
        f"list:{executor_a / 'actions'}", f"list:{executor_a / 'blobs'}",
        f"kill:{victim_pid}", f"environ:{victim_pid}",
        f"kill:{executor_pid}", f"environ:{executor_pid}",
        f"read:{engine / 'executors' / 'tenant-uids.json'}",
    ]  # fmt: skip
    attacker = project(tmp_path / "b", engine, "tenant-b")
    with runtime(attacker) as worker:
        env = action(attacker, "p", ["--probe", "out/p.json", *targets], [], ["out/p.json"])
        response = worker.execute(make_command(["@p.args"], env=env))
        assert response.exit_code == 0, response.stderr
    found = json.loads((attacker / "out" / "p.json").read_text())
    b_uid = found.pop("uid")
    assert b_uid in UIDS and b_uid != a_uid
    assert {t: r for t, r in found.items() if r == "ok"} == {}
    assert set(found.values()) <= {"EACCES", "EPERM"}, found

    # A's worker is untouched and still warm: its next action runs on it.
    with runtime(victim) as worker:
        response = worker.execute(make_command(["@v.args"], env=copy_action(victim, "v")))
        assert response.exit_code == 0, response.stderr
    assert int((victim / "out" / "v.txt").read_text().split("pid=")[1]) == victim_pid
