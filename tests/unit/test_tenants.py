"""The executor's tenants: uid ranges, stable assignment, and the privilege checks."""

from __future__ import annotations

import json
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker_runtime.executor.privileges import KEPT, kept_mask
from worker_runtime.executor.tenants import (
    RunAs,
    TenantError,
    Tenants,
    hand_over,
    parse_uid_range,
    prepare_workdir,
    privilege_problem,
    unprotected_hardlinks,
)


def test_a_uid_range_is_start_dash_end_above_the_system_accounts() -> None:
    assert parse_uid_range("200000-200002") == range(200000, 200003)
    for bad in ("200000", "0-10", "500-600", "300-200", "a-b", "200000-"):
        with pytest.raises(ValueError, match="uid-range"):
            parse_uid_range(bad)


def test_each_tenant_keeps_its_uid_across_restarts(tmp_path: Path) -> None:
    uid_map = tmp_path / "uids.json"
    tenants = Tenants(range(200000, 200003), uid_map, "main")
    assert tenants.run_as("a") == RunAs(200000, 200000)
    assert tenants.run_as("b") == RunAs(200001, 200001)
    assert tenants.run_as("a") == RunAs(200000, 200000)
    again = Tenants(range(200000, 200003), uid_map, "main")
    assert again.run_as("b") == RunAs(200001, 200001)
    assert again.run_as("c") == RunAs(200002, 200002)
    with pytest.raises(TenantError, match=r"no uid left for tenant 'd'.*widen the range"):
        again.run_as("d")
    assert uid_map.stat().st_mode & 0o777 == 0o600


def test_executors_sharing_a_map_never_give_one_uid_to_two_tenants(tmp_path: Path) -> None:
    uid_map = tmp_path / "uids.json"
    first = Tenants(range(200000, 200100), uid_map, "a")
    second = Tenants(range(200000, 200100), uid_map, "b")
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda n: (first if n % 2 else second).run_as(f"t{n}").uid, range(40)))
    assert len(set(got)) == 40
    assert first.run_as("t2") == second.run_as("t2")  # what one gave, the other sees


def test_a_map_that_does_not_fit_the_range_is_refused(tmp_path: Path) -> None:
    (tmp_path / "uids.json").write_text(json.dumps({"a": 5}))
    tenants = Tenants(range(200000, 200003), tmp_path / "uids.json", "main")
    with pytest.raises(TenantError, match="does not map tenants to uids of --uid-range"):
        tenants.run_as("a")


def test_a_workdir_the_tenants_cannot_reach_is_refused() -> None:
    # Not under pytest's tmp: it is 0700 itself.
    top = Path(tempfile.mkdtemp(prefix="wr-tenants-"))
    try:
        top.chmod(0o700)
        with pytest.raises(
            TenantError, match=rf"cannot reach the work directory .*: {top} is drwx------"
        ):
            prepare_workdir(top / "work", multi=True)
        prepare_workdir(top / "single", multi=False)  # one tenant, the executor's own user
        top.chmod(0o711)
        prepare_workdir(top / "work", multi=True)
        modes = {p.name: p.stat().st_mode & 0o777 for p in (top / "work").iterdir()}
        assert modes == {
            "actions": 0o711, "workers": 0o711, "blobs": 0o700, "discarded": 0o700,
            "worker-logs": 0o700,
        }  # fmt: skip
        assert (top / "work").stat().st_mode & 0o777 == 0o711
    finally:
        shutil.rmtree(top)


def test_single_tenant_runs_its_own_instance_only(tmp_path: Path) -> None:
    tenants = Tenants(None, tmp_path / "uids.json", "main")
    assert tenants.run_as("main") == RunAs()
    with pytest.raises(TenantError, match=r"runs only instance 'main'.*--uid-range"):
        tenants.run_as("tenant-b")


def test_root_needs_a_range_and_a_range_needs_root() -> None:
    assert "no action or worker may" in (privilege_problem(None, euid=0) or "")
    assert "needs root" in (privilege_problem(range(200000, 200010), euid=1000) or "")
    assert privilege_problem(range(200000, 200010), euid=0) is None
    assert privilege_problem(None, euid=1000) is None


@pytest.mark.needs_root("it changes owners")
def test_hand_over_gives_the_tenant_its_directories_not_its_files(tmp_path: Path) -> None:
    (tmp_path / "action" / "src" / "deep").mkdir(parents=True)
    (tmp_path / "action" / "src" / "a.txt").write_text("input")
    hand_over(tmp_path / "action", RunAs(200000, 200000))
    for directory in ("action", "action/src", "action/src/deep"):
        status = (tmp_path / directory).stat()
        assert (status.st_uid, status.st_gid, status.st_mode & 0o777) == (200000, 200000, 0o700)
    assert (tmp_path / "action" / "src" / "a.txt").stat().st_uid == 0
    hand_over(tmp_path / "action", RunAs())  # the executor's own user: nothing changes
    assert (tmp_path / "action").stat().st_uid == 200000


def test_the_executor_keeps_the_capabilities_its_work_needs() -> None:
    assert kept_mask() == sum(1 << n for n in (0, 1, 2, 3, 5, 6, 7, 8, 12, 18, 21))
    assert {"SETUID", "SETGID", "CHOWN", "SYS_ADMIN", "KILL"} <= set(KEPT.values())
    assert not {"SYS_MODULE", "SYS_PTRACE", "SYS_RAWIO"} & set(KEPT.values())


@pytest.mark.parametrize(("value", "refused"), [("0\n", True), ("1\n", False), (None, False)])
def test_tenants_without_the_sandbox_need_protected_hardlinks(
    tmp_path: Path, value: str | None, refused: bool
) -> None:
    """With fs.protected_hardlinks 0 an action hard-links the executor's files (its uid
    map, a token) among its outputs, and the executor, root, uploads them."""
    setting = tmp_path / "protected_hardlinks"
    if value is not None:
        setting.write_text(value)
    problem = unprotected_hardlinks(str(setting))
    assert (problem is not None) == refused
    if problem is not None:
        assert "fs.protected_hardlinks is 0" in problem and "sandbox" in problem
