"""Tenants apart at the operating-system level on the executor (issue 17): as root with a
uid range, each tenant's actions and workers run under a uid of its own with no
supplementary groups, in directories that are its own and private; with `--sandbox`,
each also in namespaces of its own (bubblewrap). A hostile tenant, end to end through
BuildGrid, cannot read or change another tenant's worker files or action directories,
signal its worker or read its environment, or reach the executor's own files and
environment; in the sandbox it also cannot see other processes, the host's /tmp or the
network, nor take more than its memory, processes or disk: it alone pays (its worker is
discarded, its action RESOURCE_EXHAUSTED). The victim's worker stays warm throughout."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.clusters import private_cluster
from tests.integration.test_remote import (
    action,
    copy_action,
    execute_directly,
    in_background,
    project,
    runtime,
    unique_command,
)
from worker_runtime.cluster.commands import TENANT_UID_RANGE
from worker_runtime.executor.disk import default_tenant_disk_mb
from worker_runtime.executor.limits import default_tenant_memory_mb
from worker_runtime.executor.privileges import kept_mask
from worker_runtime.executor.tenants import parse_uid_range
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from workers_dev.emulator import make_command

pytestmark = pytest.mark.needs_root("the executor switches each tenant to its own uid")
UIDS = parse_uid_range(TENANT_UID_RANGE)
#: What a refused probe may see: no permission, or (in the sandbox) nothing there.
REFUSALS = {
    *("EACCES", "EPERM", "ENOENT", "ESRCH", "ECONNREFUSED", "ENETUNREACH"),
    *("EROFS", "EBUSY"),  # a read-only mount (a worker's own tool files, in the sandbox)
}


@dataclass
class Engine:
    directory: Path
    sandbox: bool


@pytest.fixture(scope="module", params=["uids", "sandbox"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """BuildGrid with one executor for instance main and one for tenant-b: tenants under
    their own uids, and then also each in a sandbox."""
    sandbox = request.param == "sandbox"
    if sandbox:
        assert shutil.which("bwrap"), "bubblewrap is missing: scripts/bootstrap.sh installs it"
    extra = ["--sandbox", "--limit-memory", "256", "--limit-pids", "64", "--limit-disk", "32"]
    extra = extra if sandbox else []
    extra = extra or ["--no-sandbox"]  # the cluster's default as root is the sandbox
    with private_cluster("--executors", "2", *extra) as directory:
        yield Engine(directory, sandbox)


def owner_and_mode(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_uid, status.st_mode & 0o777


def worker_pids(uid: int) -> set[int]:
    """The host's pids of the test workers running as ``uid`` (in a sandbox, a worker
    only knows its pid in its own PID namespace)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"python3") and b"tools/worker.py" in argv:
            found.add(int(entry.name))
    return found


def wait_for_glob(directory: Path, pattern: str, timeout_s: float = 30) -> list[Path]:
    deadline = time.monotonic() + timeout_s
    while not (found := list(directory.glob(pattern))) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert found, f"nothing matched {pattern} in {directory}"
    return found


def test_a_hostile_tenant_cannot_reach_another_tenant_or_the_executor(
    tmp_path: Path, engine: Engine
) -> None:
    root = engine.directory
    # Tenant A (main) has a warm worker, with its tool files in its worker home.
    victim = project(tmp_path / "a", root, "main")
    with runtime(victim) as worker:
        response = worker.execute(make_command(["@w.args"], env=copy_action(victim, "w")))
        assert response.exit_code == 0, response.stderr
    executor_a = root / "executors" / "executor-0-main"
    homes = list((executor_a / "workers" / "main").iterdir())
    tool = next(h / "tools" / "worker.py" for h in homes if (h / "tools").is_dir())
    a_uid = tool.parent.parent.stat().st_uid
    (victim_pid,) = worker_pids(a_uid)
    executor_pid = int(json.loads((root / "state.json").read_text())["executor_pids"][0])

    # The executor keeps of root's powers only what its work needs, for all it starts.
    status = dict(
        line.split(":\t", 1)
        for line in Path(f"/proc/{executor_pid}/status").read_text().splitlines()
    )
    for name in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[name], 16) == kept_mask(), name
    # It says which limits are in force and how (unless told otherwise, 3/4 of the
    # machine's memory and 1,024 processes).
    log = (root / "logs" / "executor-0-main.log").read_text()
    default = f"memory {default_tenant_memory_mb()} MB, 1024 processes"
    expected = "memory 256 MB, 64 processes" if engine.sandbox else default
    assert f"limits: {expected} per action and worker, by cgroup v1" in log
    disk = 32 if engine.sandbox else default_tenant_disk_mb(executor_a)
    assert f"disk: {disk:,} MB and 1,000,000 new files and directories per action" in log

    # A's processes and directories are A's own, private, and not root's.
    assert a_uid in UIDS
    assert owner_and_mode(executor_a / "workers" / "main") == (0, 0o711)
    assert owner_and_mode(tool.parent.parent) == (a_uid, 0o700)  # the worker's home
    assert owner_and_mode(tool) == (0, 0o644)  # read, never changed
    assert owner_and_mode(executor_a) == (0, 0o711)
    assert owner_and_mode(executor_a / "blobs") == (0, 0o700)

    # A's next action runs (its worker waits for `go` in its home) while B probes it.
    visible = Path(tempfile.mkdtemp(prefix="wr-visible-"))  # the host's /tmp, open to all
    visible.chmod(0o755)
    (visible / "note.txt").write_text("on the host")
    attacker = project(tmp_path / "b", root, "tenant-b")
    with runtime(victim) as victim_front, socket.create_server(("127.0.0.1", 0)) as listener:
        waiting = copy_action(victim, "slow", "--wait-if", "remote", "go")
        slow = in_background(victim_front, "slow.args", waiting)
        running = wait_for_glob(executor_a, "actions/*/started.txt")[0].parent
        targets = [
            f"list:{running}", f"read:{running / 'started.txt'}",
            f"write:{running / 'evil.txt'}", f"read:{tool}", f"write:{tool}",
            f"list:{tool.parent}", f"list:{executor_a / 'workers'}",
            f"list:{executor_a / 'workers' / 'main'}", f"list:{executor_a / 'worker-logs'}",
            f"list:{executor_a / 'actions'}", f"list:{executor_a / 'blobs'}",
            f"kill:{victim_pid}", f"environ:{victim_pid}",
            f"kill:{executor_pid}", f"environ:{executor_pid}",
            f"read:{root / 'executors' / 'tenant-uids.json'}",
        ]  # fmt: skip
        if engine.sandbox:  # what only the sandbox keeps away
            targets += [
                f"cmdline:{victim_pid}", f"read:{visible / 'note.txt'}",
                f"connect:127.0.0.1:{listener.getsockname()[1]}",
                # B's own worker's tool files (from its home): mounted read-only
                "write:tools/worker.py", "unlink:tools/worker.py", "rename:tools/worker.py",
                "rename:tools",
            ]  # fmt: skip
        try:
            with runtime(attacker) as worker:
                env = action(attacker, "p", ["--probe", "out/p.json", *targets], [], ["out/p.json"])
                response = worker.execute(make_command(["@p.args"], env=env))
                assert response.exit_code == 0, response.stderr
        finally:
            shutil.rmtree(visible)
            (tool.parent.parent / "go").touch()  # A's action goes on, untouched
        assert slow.result(timeout=60).exit_code == 0
    found = json.loads((attacker / "out" / "p.json").read_text())
    b_uid = found.pop("uid")
    assert b_uid in UIDS and b_uid != a_uid
    assert {t: r for t, r in found.items() if r == "ok"} == {}
    assert set(found.values()) <= REFUSALS, found
    if engine.sandbox:  # its tool files are there, and refused by the read-only mount
        assert found["write:tools/worker.py"] in ("EACCES", "EROFS")  # root's file first
        tool_probes = ("unlink:tools/worker.py", "rename:tools/worker.py", "rename:tools")
        assert {found[t] for t in tool_probes} <= {"EROFS", "EBUSY"}, found
    assert (victim / "out" / "slow.txt").read_text().startswith("alpha\npid=")

    if engine.sandbox:  # the network, when the platform asks for it (another worker)
        config = json.loads((attacker / "worker.json").read_text())
        config["remote"]["properties"] = {"network": "on"}
        (attacker / "worker.json").write_text(json.dumps(config))
        with socket.create_server(("127.0.0.1", 0)) as listener, runtime(attacker) as worker:
            port = listener.getsockname()[1]
            env = action(attacker, "n", ["--probe", "out/n.json", f"connect:127.0.0.1:{port}"],
                         [], ["out/n.json"])  # fmt: skip
            response = worker.execute(make_command(["@n.args"], env=env))
            assert response.exit_code == 0, response.stderr
        assert (
            json.loads((attacker / "out" / "n.json").read_text())[f"connect:127.0.0.1:{port}"]
            == "ok"
        )

    if engine.sandbox:  # a fork bomb, a memory hog and a disk filler, each contained
        with runtime(attacker) as worker:
            env = action(attacker, "f", ["--fork-bomb", "out/f.txt"], [], ["out/f.txt"])
            response = worker.execute(make_command(["@f.args"], env=env))
            assert response.exit_code == 0, response.stderr
            assert int((attacker / "out" / "f.txt").read_text()) < 64  # stopped at the limit
            env = action(attacker, "m", ["--eat", "512"], [], [])
            response = worker.execute(make_command(["@m.args"], env=env))
            assert response.exit_code == 125
            assert "code 8" in response.stderr  # RESOURCE_EXHAUSTED
            assert "passed its memory limit of 256 MB" in response.stderr
            env = action(attacker, "d", ["--fill", "d.bin", "48"], [], [])
            response = worker.execute(make_command(["@d.args"], env=env))
            assert response.exit_code == 125 and "code 8" in response.stderr
            assert "stopped at its disk limit: it wrote more than 32 MB" in response.stderr
            env = action(attacker, "after", ["--probe", "out/after.json"], [], ["out/after.json"])
            response = worker.execute(make_command(["@after.args"], env=env))
            assert response.exit_code == 0, response.stderr  # on a fresh worker

    # A's worker is untouched and still warm: its next action runs on it.
    with runtime(victim) as worker:
        response = worker.execute(make_command(["@v.args"], env=copy_action(victim, "v")))
        assert response.exit_code == 0, response.stderr
    assert worker_pids(a_uid) == {victim_pid}


def test_the_executors_root_processes_honour_none_of_a_tenants_variables(
    tmp_path: Path, engine: Engine
) -> None:
    """What runs as root in front of a tenant's program (the control group's join,
    bubblewrap, setpriv) ran with the action's environment: LD_PRELOAD naming a library
    among the action's inputs (or a worker's tool files) was root's to load, the whole
    machine. The loader writes its log where LD_DEBUG_OUTPUT says, as the process's own
    user: from a one-shot action and from a persistent worker, no file is root's now."""
    probe = Path(tempfile.mkdtemp(prefix="wr-loader-"))  # the host's /tmp, open to all
    try:
        probe.chmod(0o1777)
        loader = {"LD_DEBUG": "files", "LD_DEBUG_OUTPUT": f"{probe}/ld"}
        variables = [
            re_pb2.Command.EnvironmentVariable(name=name, value=value)
            for name, value in sorted(loader.items())
        ]
        command = unique_command("/bin/true", environment_variables=variables)
        with grpc.insecure_channel(f"unix://{engine.directory}/run/buildgrid.sock") as channel:
            response = execute_directly(channel, re_pb2.Directory(), command)
        assert response.status.code == 0 and response.result.exit_code == 0, response
        if engine.sandbox:
            # The sandbox's /tmp is its own: the worker's loader, not finding the log's
            # directory, would log to its stdout, the protocol's. (test_limits.py runs
            # a worker's launch in the sandbox too.)
            assert 0 not in {path.stat().st_uid for path in probe.iterdir()}
            return
        root = project(tmp_path, engine.directory, "main")
        config = json.loads((root / "worker.json").read_text())
        config["env"] = loader
        (root / "worker.json").write_text(json.dumps(config))
        with runtime(root) as worker:
            answer = worker.execute(make_command(["@e.args"], env=copy_action(root, "e")))
        assert answer.exit_code == 0, answer.stderr
        owners = {path.stat().st_uid for path in probe.iterdir()}
        assert owners and owners <= set(UIDS)  # not root's; the variables reach the tenant
    finally:
        shutil.rmtree(probe)
