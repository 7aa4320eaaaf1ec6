"""Resource limits of the executor's actions and workers (cgroups, as root): a process
over its memory is killed alone and the group says so; a fork bomb stops at the process
limit; the CPU quota is written; whatever an action left running, in a new session or
not, goes with its group."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import is_gone, wait_gone
from worker_runtime.executor.launch import launch
from worker_runtime.executor.limits import Confinement, Group, Limits
from worker_runtime.executor.sandbox import Sandbox
from worker_runtime.executor.tenants import RunAs

pytestmark = pytest.mark.needs_root("it makes control groups")
TENANT = RunAs(200008, 200008)
TENANT_ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def confinement() -> Iterator[Confinement]:
    made = Confinement(Limits(memory_mb=64, cpus=0.5, pids=16), f"test-{os.getpid()}")
    yield made
    made.clear()


def run(group: Group, *argv: str, run_as: RunAs = TENANT) -> subprocess.CompletedProcess[str]:
    started = launch(
        list(argv),
        run_as=run_as,
        sandbox=None,
        group=group,
        writable=[],
        cwd="/",
        network=True,
        env=TENANT_ENV,
    )
    assert started.run_as == RunAs()  # joined as root, then dropped inside
    return subprocess.run(started.argv, capture_output=True, text=True, timeout=60, cwd="/")


def test_this_machine_kind_has_cgroup_v1(confinement: Confinement) -> None:
    assert confinement.kind == "cgroup v1"  # v2's hierarchy here has no controllers
    assert "by cgroup v1" in confinement.describe()


def test_a_process_over_its_memory_is_killed_and_the_group_says_so(
    confinement: Confinement,
) -> None:
    group = confinement.group("action")
    eat = "b = [bytearray(1 << 20) for _ in range(256)]"
    result = run(group, "/usr/bin/python3", "-c", eat)
    assert result.returncode == -9 and group.oom_killed()
    calm = confinement.group("action")
    assert run(calm, "/usr/bin/python3", "-c", "print(1)").stdout == "1\n"
    assert not calm.oom_killed()
    group.remove()
    calm.remove()


def test_a_fork_bomb_stops_at_the_process_limit(confinement: Confinement) -> None:
    group = confinement.group("action")
    bomb = "for i in $(seq 64); do sleep 30 & done; wait"
    started = launch(
        ["/bin/sh", "-c", bomb], run_as=TENANT, sandbox=None, group=group, writable=[],
        cwd="/", network=True, env=TENANT_ENV,
    )  # fmt: skip
    process = subprocess.Popen(started.argv, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 10
    while len(group.pids()) < 15 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert 8 < len(group.pids()) <= 16  # no more, however many it asked for
    group.remove()  # every one of them goes
    assert process.wait(10) != 0 and group.pids() == set()
    assert process.stderr is not None and b"fork" in process.stderr.read().lower()


def test_the_cpu_quota_is_written(confinement: Confinement) -> None:
    group = confinement.group("worker")
    cpu = next(d for d in group.directories if "/cpu/" in str(d))
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    group.remove()


def test_what_an_action_left_running_goes_with_its_group(confinement: Confinement) -> None:
    group = confinement.group("action")
    escape = (
        "import os, subprocess, sys; "
        "p = subprocess.Popen(['sleep', '60'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True); print(p.pid)"
    )
    stray = int(run(group, "/usr/bin/python3", "-c", escape).stdout)
    assert os.path.exists(f"/proc/{stray}")
    group.remove()
    time.sleep(0.1)
    assert process_state(stray) in ("gone", "Z")  # killed (reaped or not yet by init)


def process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_without_cgroups_rlimits_bound_each_process() -> None:
    fallback = Confinement(Limits(memory_mb=128, pids=5), "rlimits", rlimits_only=True)
    assert fallback.kind == "rlimits" and "by rlimits (no CPU rate" in fallback.describe()
    group = fallback.group("action")
    # RLIMIT_NPROC counts every process of the uid: one that no other test uses.
    alone = RunAs(200010, 200010)
    hog = run(group, "/usr/bin/python3", "-c", "b = bytearray(512 << 20)", run_as=alone)
    assert hog.returncode != 0 and "MemoryError" in hog.stderr
    many = "import subprocess\nfor i in range(20): subprocess.Popen(['sleep', '0.2'])"
    forks = run(group, "/usr/bin/python3", "-c", many, run_as=alone)
    assert forks.returncode != 0 and "Resource temporarily unavailable" in forks.stderr
    assert not group.oom_killed()  # no group to count: a failure the action sees itself


def test_the_program_is_found_on_path_as_the_tenant_finds_it(confinement: Confinement) -> None:
    """A PATH entry only root may enter (pyenv's shims under /root, say) is passed over
    as it is for the tenant, not taken because root found it."""
    top = Path(tempfile.mkdtemp(prefix="wr-path-"))
    try:
        top.chmod(0o755)
        for name, mode in (("private", 0o700), ("public", 0o755)):
            (top / name).mkdir(mode=mode)
            (top / name).chmod(mode)
            program = top / name / "which-one"
            program.write_text(f"#!/bin/sh\necho {name}\n")
            program.chmod(0o755)
        group = confinement.group("action")
        env = {"PATH": f"{top / 'private'}:{top / 'public'}:/usr/bin:/bin"}
        started = launch(
            ["which-one"], run_as=TENANT, sandbox=None, group=group, writable=[], cwd="/",
            network=True, env=env,
        )  # fmt: skip
        result = subprocess.run(
            started.argv, capture_output=True, text=True, env=started.env, cwd="/"
        )
        assert result.stdout == "public\n", result.stderr
        group.remove()
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize("sandboxed", [False, True], ids=["group", "group-and-sandbox"])
def test_what_runs_as_root_in_front_of_a_tenant_honours_none_of_its_variables(
    confinement: Confinement, sandboxed: bool
) -> None:
    """The group's join, bubblewrap and setpriv run as root before the tenant's program,
    and ran with the tenant's environment: LD_PRELOAD naming a library in the tenant's
    directory was root's to load. The loader of every process writes a log where
    LD_DEBUG_OUTPUT says, as its own user: only the tenant's program may write one now,
    and it does (its variables still reach it), as the tenant."""
    probe = Path(tempfile.mkdtemp(prefix="wr-env-"))
    try:
        probe.chmod(0o1777)
        env = {"PATH": "/usr/bin:/bin", "LD_DEBUG": "files", "LD_DEBUG_OUTPUT": f"{probe}/ld"}
        sandbox = Sandbox.find() if sandboxed else None
        group = confinement.group("action")
        started = launch(
            ["/bin/true"], run_as=TENANT, sandbox=sandbox, group=group, writable=[str(probe)],
            cwd=str(probe), network=False, env=env,
        )  # fmt: skip
        assert "LD_DEBUG" not in started.env
        result = subprocess.run(started.argv, capture_output=True, env=started.env, cwd=probe)
        group.remove()
        assert result.returncode == 0, result.stderr
        owners = {path.stat().st_uid for path in probe.iterdir()}
        assert owners == {TENANT.ids[0]}  # type: ignore[index]
    finally:
        shutil.rmtree(probe)


def test_a_program_named_with_an_equals_sign_is_run_not_taken_for_a_variable(
    confinement: Confinement,
) -> None:
    """env takes a first word holding `=` for one more variable to set."""
    top = Path(tempfile.mkdtemp(prefix="wr-equals-"))
    try:
        top.chmod(0o755)
        program = top / "a=b"
        program.write_text('#!/bin/sh\necho "ran $X"\n')
        program.chmod(0o755)
        group = confinement.group("action")
        started = launch(
            [str(program)], run_as=TENANT, sandbox=None, group=group, writable=[], cwd="/",
            network=True, env={"PATH": "/usr/bin:/bin", "X": "1"},
        )  # fmt: skip
        result = subprocess.run(
            started.argv, capture_output=True, text=True, env=started.env, cwd="/"
        )
        group.remove()
        assert result.stdout == "ran 1\n", result.stderr
    finally:
        shutil.rmtree(top)


def test_a_tenants_process_dies_with_the_executor_thread_that_started_it(
    confinement: Confinement,
) -> None:
    """The death signal set before the uid change (the worker's outer setpriv) is
    cleared by the kernel at that change: killed with SIGKILL, the executor left its
    tenants' workers and actions running under their uids, for ever."""
    group = confinement.group("action")
    started = launch(
        ["/bin/sleep", "60"], run_as=TENANT, sandbox=None, group=group, writable=[],
        cwd="/", network=True, env=TENANT_ENV,
    )  # fmt: skip
    # The executor: a process of its own that starts the tenant's, then is killed.
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen(sys.argv[1:], env={'PATH': '/usr/bin:/bin'})\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    executor = subprocess.Popen(
        [sys.executable, "-c", code, *started.argv], stdout=subprocess.PIPE, text=True
    )
    assert executor.stdout is not None
    tenant = int(executor.stdout.readline())
    deadline = time.monotonic() + 10
    # In the group once the join ran, but its death signal is set by setpriv after it:
    # wait for the command itself (a kill before that left it running, a flake in CI).
    comm = Path(f"/proc/{tenant}/comm")
    while time.monotonic() < deadline and not (
        tenant in group.pids() and comm.exists() and comm.read_text().strip() == "sleep"
    ):
        time.sleep(0.02)
    assert tenant in group.pids()
    assert comm.read_text().strip() == "sleep"
    executor.kill()
    executor.wait()
    executor.stdout.close()
    while group.pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    survivors = group.pids()
    group.remove()
    assert survivors == set()


#: A stand-in executor: takes its groups' lock as the executor does at its start (its
#: bot id argv[2], else the default `<hostname>-<pid>`), starts `sleep` in a group of its
#: own in a new session, prints the sleep's pid, and waits to be killed.
PREDECESSOR = """
import os, socket, subprocess, sys, time
from pathlib import Path
from worker_runtime.executor.limits import Confinement, Limits
bot_id = sys.argv[2] if len(sys.argv) > 2 else f"{socket.gethostname()}-{os.getpid()}"
confinement = Confinement(Limits(pids=16), bot_id, locks=Path(sys.argv[1]))
confinement.start()
group = confinement.group("action")
sleep = subprocess.Popen(group.command(["sleep", "300"]), start_new_session=True)
while sorted(group.pids()) != [sleep.pid]:
    time.sleep(0.01)
print(sleep.pid, flush=True)
time.sleep(300)
"""


def start_predecessor(locks: Path, *bot_id: str) -> tuple[subprocess.Popen[str], int]:
    """A stand-in executor and the pid of the `sleep` in its group."""
    process = subprocess.Popen(
        [sys.executable, "-c", PREDECESSOR, str(locks), *bot_id],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def test_a_killed_executors_groups_with_a_default_bot_id_go_at_the_next_start(
    tmp_path: Path,
) -> None:
    """The default bot id is `<hostname>-<pid>`, a new one at every start: a SIGKILLed
    executor's groups, and what ran in them, stayed for ever, its successor clearing only
    its own bot id's. Those of a running executor stay, even under a bot id naming a pid
    that is gone (its lock is held)."""
    locks = tmp_path / "locks"
    # As an older executor left them (before locks were root's alone): readable by all.
    locks.mkdir(mode=0o755)
    own = locks / f"{socket.gethostname()}-{os.getpid()}.lock"
    own.touch(mode=0o644)
    gone_pid = subprocess.Popen(["true"])  # its pid, once reaped, names no process
    gone_pid.wait()
    killed, orphan = start_predecessor(locks)
    running, kept = start_predecessor(locks, f"{socket.gethostname()}-{gone_pid.pid}")
    successor = Confinement(Limits(pids=16), f"{socket.gethostname()}-{os.getpid()}", locks=locks)
    try:
        killed.kill()
        killed.wait()
        assert not is_gone(orphan)  # it outlived its executor (a session of its own)
        successor.start()
        assert wait_gone([orphan]) == []
        groups = [base / f"{socket.gethostname()}-{killed.pid}" for base in successor._bases]
        assert groups and not any(group.exists() for group in groups)
        assert not is_gone(kept)  # the running executor's action runs on
        # Root's alone: no other user may hold a lock to keep a dead executor's groups.
        assert (locks.stat().st_mode & 0o777, own.stat().st_mode & 0o777) == (0o700, 0o600)
        assert not (locks / f"{socket.gethostname()}-{killed.pid}.lock").exists()
    finally:
        running.kill()
        running.wait()
        successor.release()
        Confinement(Limits(pids=16), f"{socket.gethostname()}-{gone_pid.pid}", locks=locks).clear()
        successor.clear()
    assert wait_gone([kept]) == []
    assert not own.exists()  # let go of, and removed, at the executor's end
