"""This repository as a Buck2 project, under the real Buck2: targets, builds through the
runtime's daemon, ``buck2 run``, the fallback with workers off, and warmth across commands.

The tests of this module share one project and run in order: the first build starts our
daemon's backends, and later tests check what stays warm.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.buck2.conftest import make_project
from tests.buck2.harness import HASKELL_EXPECTED, Buck2Project
from tests.starlark.test_java_rules import EXPECTED_OUTPUT as JAVA_EXPECTED

pytestmark = pytest.mark.timeout(1800)

EXAMPLES = "//examples/..."
#: The worker tools of the examples, as `worker-runtime status` names their backends.
TOOLS = ("javac-worker", "ghc-worker", "python3")  # text_stats runs as python3


def backends_by_tool(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per tool: the pids of its backends and the requests they served in all."""
    found: dict[str, dict[str, Any]] = {}
    for backend in status["backends"]:
        for tool in TOOLS:
            if tool in backend["tool"]:
                entry = found.setdefault(tool, {"pids": set(), "requests_served": 0})
                entry["pids"].add(backend["pid"])
                entry["requests_served"] += backend["requests_served"]
    return found


def class_files(jar: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(jar) as archive:
        return {n: archive.read(n) for n in archive.namelist() if n.endswith(".class")}


def haskell_interfaces(project: Buck2Project) -> dict[str, bytes]:
    """The example's interface files, by their path below examples/haskell/."""
    outputs = project.root / "buck-out" / "v2"
    return {
        str(p).split("/examples/haskell/", 1)[1]: p.read_bytes()
        for p in outputs.rglob("*.hi")
        if "/examples/haskell/" in str(p)
    }


def test_targets_lists_every_example(project: Buck2Project) -> None:
    listed = project.run("targets", "//...").stdout.split()
    for target in (
        "root//examples/java:bookshop",
        "root//examples/haskell:bookshop",
        "root//examples/worker_rule:report",
        "root//examples/text_stats:text_stats_worker",
    ):
        assert target in listed, listed


def test_build_serves_every_worker_action_through_the_daemon(project: Buck2Project) -> None:
    project.build(EXAMPLES)
    status = project.daemon_status()
    assert status["running"]
    found = backends_by_tool(status)
    assert set(found) == set(TOOLS), status["backends"]
    # 7 javac actions, 17 GHC module compiles (16 library modules and Main), 1 report.
    served = {tool: entry["requests_served"] for tool, entry in found.items()}
    assert served == {"javac-worker": 7, "ghc-worker": 17, "python3": 1}, served
    # The daemon's log shows each of Buck2's workers (its sockets under /tmp/buck2_worker/)
    # attaching: one per worker tool of the command.
    logs = project.runtime("logs", "-n", "200").stdout
    assert logs.count("attached /tmp/buck2_worker/") == 3, logs
    assert logs.count("; server h2)") == 3, logs  # the default server


def test_buck2_run_prints_the_expected_output(project: Buck2Project) -> None:
    java = project.run("run", "//examples/java:bookshop")
    assert java.stdout == JAVA_EXPECTED
    haskell = project.run("run", "//examples/haskell:bookshop")
    assert haskell.stdout == HASKELL_EXPECTED


def test_second_command_after_an_edit_finds_the_backends_warm(project: Buck2Project) -> None:
    before = backends_by_tool(project.daemon_status())
    java_source = project.root / "examples/java/src/com/example/bookshop/util/Strings.java"
    java_source.write_text(java_source.read_text() + "\n// edited\n")
    haskell_source = project.root / "examples/haskell/Shop/Core/Pretty.hs"
    haskell_source.write_text(haskell_source.read_text() + "\n-- edited\n")
    project.build(EXAMPLES)
    after = backends_by_tool(project.daemon_status())
    for tool in ("javac-worker", "ghc-worker"):
        # The same processes, warm, served the rebuilt actions: none was started anew.
        assert after[tool]["pids"] == before[tool]["pids"], (tool, before, after)
        assert after[tool]["requests_served"] > before[tool]["requests_served"], tool


def test_backends_stay_warm_after_buck2_kill(project: Buck2Project) -> None:
    before = backends_by_tool(project.daemon_status())
    project.kill()
    java_source = project.root / "examples/java/src/com/example/bookshop/util/Strings.java"
    java_source.write_text(java_source.read_text() + "\n// edited again\n")
    project.build("//examples/java:bookshop")
    after = backends_by_tool(project.daemon_status())
    assert after["javac-worker"]["pids"] == before["javac-worker"]["pids"], (before, after)
    assert after["javac-worker"]["requests_served"] > before["javac-worker"]["requests_served"]


@pytest.fixture(scope="module")
def grpcio_project(buck2: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buck2Project]:
    yield from make_project(buck2, tmp_path_factory.mktemp("grpcio"))


def test_the_grpcio_server_serves_buck2(grpcio_project: Buck2Project) -> None:
    """[persistent_workers] server = grpcio (the tests above run on the default, h2):
    Buck2's own client on grpcio's server, streaming as the prelude sets it, across two
    commands."""
    project = grpcio_project
    grpcio = ("persistent_workers.server=grpcio",)
    assert project.run("run", "-c", grpcio[0], "//examples/java:bookshop").stdout == JAVA_EXPECTED
    java_source = project.root / "examples/java/src/com/example/bookshop/util/Strings.java"
    java_source.write_text(java_source.read_text() + "\n// edited\n")
    project.build("//examples/java:bookshop", "//examples/worker_rule:report", config=grpcio)
    logs = project.runtime("logs", "-n", "200").stdout
    assert "; server grpcio)" in logs and "; server h2)" not in logs, logs
    served = backends_by_tool(project.daemon_status())
    assert served["javac-worker"]["requests_served"] >= 8, served


@pytest.fixture(scope="module")
def cold_project(buck2: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buck2Project]:
    yield from make_project(buck2, tmp_path_factory.mktemp("cold"))


def test_workers_off_builds_the_same_outputs(
    project: Buck2Project, cold_project: Buck2Project
) -> None:
    off = ("persistent_workers.enabled=false",)
    for target in ("//examples/java:util", "//examples/java:report"):
        warm_jar = project.output_of(target)
        cold_jar = cold_project.output_of(target, off)
        assert class_files(warm_jar) == class_files(cold_jar), target
    cold_project.build(EXAMPLES, config=off)
    # GHC 9.0 interfaces are byte-identical warm and cold (comments, as the edits above
    # made, do not reach them); object code differs in local symbol names only.
    cold_interfaces = haskell_interfaces(cold_project)
    assert len(cold_interfaces) == 17 and cold_interfaces == haskell_interfaces(project)
    assert cold_project.run("run", "-c", off[0], "//examples/haskell:bookshop").stdout == (
        HASKELL_EXPECTED
    )
    assert cold_project.run("run", "-c", off[0], "//examples/java:bookshop").stdout == (
        JAVA_EXPECTED
    )
    # With workers off no worker is launched: the cold project has no daemon of ours.
    assert cold_project.runtime("status", "--json", check=False).returncode == 1
