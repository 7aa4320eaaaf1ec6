"""Actions shaped as Buck2 sends them to remote persistent workers (workers_dev/
buck2_re_action.py: exe + @argfile, Buck2's own key, no tool marks), through BuildGrid
to our executor: served warm, with a key and tool files the executor derives itself."""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clusters import private_cluster
from tests.conftest import REPO_ROOT
from tests.worker_identity import host_pid
from worker_runtime.remote.client import RemoteClient, RemoteResult, RemoteSettings
from worker_runtime.remote.merkle import Blobs
from workers_dev.buck2_re_action import Buck2Refuses, buck2_action

FAKE_WORKER = REPO_ROOT / "tests" / "backends" / "fake_worker.py"
#: The executor runs a tenant's worker as the tenant's own uid, which cannot reach this
#: venv's interpreter here (it lives under root's 0700 home): the system's Python 3.11,
#: with the venv's packages and the repository on its path.
PYTHON = "/usr/bin/python3"
ENVIRONMENT = {"PYTHONPATH": f"{sysconfig.get_paths()['purelib']}:{REPO_ROOT}"}
TOOL = "buck-out/v2/gen/root/tools/__worker__/fake_worker.py"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def engine() -> Iterator[Path]:
    with private_cluster("--executors", "2") as directory:  # instances main and tenant-b
        yield directory


@pytest.fixture(scope="module")
def client(engine: Path) -> RemoteClient:
    return RemoteClient(RemoteSettings(f"unix://{engine}/run/buildgrid.sock", "main"))


def project(tmp_path: Path, tool_suffix: str = "") -> Path:
    root = tmp_path / "project"
    (root / TOOL).parent.mkdir(parents=True, exist_ok=True)
    (root / TOOL).write_text(FAKE_WORKER.read_text() + tool_suffix)
    return root


def run(client: RemoteClient, root: Path, name: str, buck2_key: str = "buck2-key") -> RemoteResult:
    """One request, `identity`: the worker answers with its pid and PID namespace."""
    (root / f"{name}.args").write_text("identity\n")
    blobs = Blobs()
    built = buck2_action(
        root, exe=[PYTHON, TOOL], arguments=[f"@{name}.args"],
        inputs=[TOOL, f"{name}.args"], outputs=[], buck2_key=buck2_key, blobs=blobs,
        environment=ENVIRONMENT,
    )  # fmt: skip
    return client.run(built, blobs, root)


def test_a_buck2_shaped_action_runs_on_a_warm_worker(client: RemoteClient, tmp_path: Path) -> None:
    root = project(tmp_path)
    first, second = run(client, root, "a"), run(client, root, "b")
    assert first.exit_code == second.exit_code == 0, first.stderr + second.stderr
    assert first.stderr == second.stderr  # the same worker process answered both
    assert host_pid(first.stderr.decode())


def test_the_executor_never_trusts_buck2_s_key(client: RemoteClient, tmp_path: Path) -> None:
    """The key is recomputed from the tool files the exe names: another tool under the
    same client key gets another worker; the same tool under another key, the same one."""
    root = project(tmp_path / "one")
    same_tool = run(client, root, "c", buck2_key="key-1").stderr
    assert run(client, root, "d", buck2_key="key-2").stderr == same_tool
    other = project(tmp_path / "two", tool_suffix="\n# another build of the tool\n")
    assert run(client, other, "e", buck2_key="key-1").stderr != same_tool


def test_buck2_refuses_request_arguments_that_are_not_argfiles(tmp_path: Path) -> None:
    with pytest.raises(Buck2Refuses, match="must be passed as `@argfile`"):
        buck2_action(
            tmp_path, exe=["w"], arguments=["pid"], inputs=[], outputs=[], buck2_key="k",
            blobs=Blobs(),
        )  # fmt: skip


def test_the_tool_files_are_those_the_startup_command_names() -> None:
    from worker_runtime.remote.convention import named_tool_files

    files = [("tools/w.py", "a"), ("tools/lib/x.py", "b"), ("src/in.txt", "c"), ("w", "d")]
    assert named_tool_files(["python3", "tools/w.py"], files) == [("tools/w.py", "a")]
    assert named_tool_files(["/usr/bin/java", "-jar", "tools"], files) == [
        ("tools/lib/x.py", "b"),
        ("tools/w.py", "a"),
    ]
    assert named_tool_files(["../w", "/abs/w"], files) == []


def test_without_path_the_executor_s_own_is_used(client: RemoteClient, tmp_path: Path) -> None:
    """Buck2 sends no PATH: the executor gives the worker its own PATH, so the commands
    a worker or a one-shot action runs by name resolve on the executor's machine."""
    root = project(tmp_path)
    (root / "p.args").write_text("env\nPATH\n")
    blobs = Blobs()
    built = buck2_action(
        root, exe=[PYTHON, TOOL], arguments=["@p.args"], inputs=[TOOL, "p.args"],
        outputs=[], buck2_key="k", blobs=blobs, environment=ENVIRONMENT,
    )  # fmt: skip
    result = client.run(built, blobs, root)
    assert result.exit_code == 0, result.stderr
    path = result.stderr.decode().strip()
    assert path != "<unset>" and "/usr/bin" in path.split(":"), path


def test_output_parents_are_made_before_the_command_runs(
    client: RemoteClient, tmp_path: Path
) -> None:
    """REAPI has the server create the parent directories of the outputs (`jar --file
    out/x.jar` does not make out/); with workers off Buck2 sends a plain action."""
    root = tmp_path / "project"
    root.mkdir()
    blobs = Blobs()
    built = buck2_action(
        root, exe=["/bin/sh", "-c", "echo made > out/deep/x.txt"], arguments=[], inputs=[],
        outputs=["out/deep/x.txt"], buck2_key=None, blobs=blobs,
    )  # fmt: skip
    result = client.run(built, blobs, root)
    assert result.exit_code == 0, result.stderr
    assert (root / "out" / "deep" / "x.txt").read_text() == "made\n"


def test_two_instances_never_share_a_worker(
    client: RemoteClient, engine: Path, tmp_path: Path
) -> None:
    """The same Buck2-shaped action under Buck2's `instance_name` main and tenant-b: each
    instance gets its own worker process, and keeps reusing it."""
    other = RemoteClient(RemoteSettings(f"unix://{engine}/run/buildgrid.sock", "tenant-b"))
    root = project(tmp_path)
    pids = {
        name: [run(each, root, f"{name}{i}").stderr for i in range(2)]
        for name, each in (("main", client), ("tenant", other))
    }
    assert pids["main"][0] == pids["main"][1] and pids["tenant"][0] == pids["tenant"][1]
    assert pids["main"][0] != pids["tenant"][0]
