"""The executor's cgroup v2 path on a stand-in hierarchy: this machine kind's v2
hierarchy has no controllers (they are v1's), so the kernel's enforcement of v2 limits
is not run here. What is checked: that the v2 mechanism is chosen where a v2 mount has
the controllers, and that a group is the directory, files and values the kernel's v2
interface names (``memory.max``, ``memory.swap.max``, ``cpu.max``, ``pids.max``,
``cgroup.procs``, ``memory.events``); and that a group that cannot be removed is
logged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from worker_runtime.executor import limits


@pytest.fixture
def mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A v2 mount with the controllers, standing in for /sys/fs/cgroup."""
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (root / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(limits, "_mounts", lambda: [(str(root), "cgroup2", {"rw"})])
    return root


def test_a_v2_mount_with_the_controllers_is_preferred(mount: Path) -> None:
    confinement = limits.Confinement(limits.Limits(pids=8), "executor-0-main")
    assert confinement.kind == "cgroup v2"
    assert confinement.describe() == "8 processes per action and worker, by cgroup v2"


def test_a_v2_mount_without_them_is_not_used(mount: Path) -> None:
    (mount / "cgroup.controllers").write_text("hugetlb\n")  # this machine kind's
    assert limits.Confinement(limits.Limits(pids=8), "b").kind != "cgroup v2"


def test_a_v2_group_is_made_of_the_files_v2_names(mount: Path) -> None:
    confinement = limits.Confinement(limits.Limits(256, 1.5, 64), "executor-0-main")
    group = confinement.group("action")
    (directory,) = group.directories
    assert directory.parent == mount / limits.BASE / "executor-0-main"
    assert (directory / "memory.max").read_text() == str(256 << 20)
    assert (directory / "memory.swap.max").read_text() == "0"  # memory alone, no swap
    assert (directory / "cpu.max").read_text() == "150000 100000"  # 1.5 CPUs per period
    assert (directory / "pids.max").read_text() == "64"
    # The mount hands the controllers down (the kernel makes the file in each level).
    assert (mount / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"

    # The command joins the group first: its shell writes its own pid to cgroup.procs.
    joined = subprocess.run(
        group.command(["/bin/sh", "-c", "echo $$"]), capture_output=True, text=True, timeout=30
    )
    assert joined.returncode == 0, joined.stderr
    assert group.pids() == {int(joined.stdout)}  # the shell exec'd the command: one pid

    # An OOM kill is read from memory.events.
    assert not group.oom_killed()
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.oom_killed()


def test_only_the_limits_given_are_written(mount: Path) -> None:
    group = limits.Confinement(limits.Limits(pids=5), "executor-1-tenant-b").group("worker")
    (directory,) = group.directories
    assert sorted(p.name for p in directory.iterdir()) == ["pids.max"]


def test_a_group_that_cannot_be_removed_is_logged_with_what_still_runs_in_it(
    mount: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process stuck in the kernel outlives SIGKILL and keeps its group: that was
    silent. (Here a pid no process can have stands for it in the stand-in's
    ``cgroup.procs``, and the stand-in's files keep the directory.)"""
    group = limits.Confinement(limits.Limits(pids=5), "executor-0-main").group("action")
    (directory,) = group.directories
    (directory / "cgroup.procs").write_text("4194305\n")  # past any pid_max
    with caplog.at_level("WARNING", logger=limits.__name__):
        group.remove()
    assert directory.is_dir()
    assert f"control group {directory} was not removed" in caplog.text
    assert "still in it: [4194305]" in caplog.text


def test_a_group_removed_already_is_not_logged(
    mount: Path, caplog: pytest.LogCaptureFixture
) -> None:
    group = limits.Confinement(limits.Limits(pids=5), "executor-0-main").group("action")
    (directory,) = group.directories
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()
    with caplog.at_level("WARNING", logger=limits.__name__):
        group.remove()
    assert caplog.text == ""
