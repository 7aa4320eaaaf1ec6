"""Conformance of the javac worker against a client no one here wrote: Bazel 4.2.3 (Debian's
bazel-bootstrap) drives it as a persistent worker, singleplex and multiplex, proto and JSON.

The workspace (tests/integration/bazel_workspace/) has only its own Starlark rule, so Bazel
needs no network. scripts/bootstrap.sh installs Bazel; without it this test fails, loudly.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

WORKSPACE = REPO_ROOT / "tests" / "integration" / "bazel_workspace"
JAVAC_WORKER = REPO_ROOT / "toolchains" / "java" / "javac-worker"
BAZEL = shutil.which("bazel") or "/usr/bin/bazel"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    assert Path(BAZEL).exists(), (
        "bazel is missing: scripts/bootstrap.sh installs Debian's bazel-bootstrap"
    )
    ws = tmp_path / "ws"
    (ws / "tools").mkdir(parents=True)
    (ws / "WORKSPACE").write_text("")
    shutil.copy(WORKSPACE / "defs.bzl", ws / "defs.bzl")
    shutil.copy(WORKSPACE / "BUILD.template", ws / "BUILD")
    (ws / "tools" / "BUILD").write_text('exports_files(["worker.sh"])\n')
    # Bazel gives actions an almost empty environment: the wrapper sets PATH for java/javac.
    wrapper = ws / "tools" / "worker.sh"
    wrapper.write_text(f'#!/bin/sh\nexport PATH=/usr/bin:/bin\nexec "{JAVAC_WORKER}" "$@"\n')
    wrapper.chmod(0o755)
    (ws / "A.java").write_text(
        "package p;\npublic class A { public static int v() { return 1; } }\n"
    )
    (ws / "B.java").write_text("package p;\npublic class B { int w = A.v(); }\n")
    (ws / "Broken.java").write_text("package p;\nclass Broken { String s = 1; }\n")
    return ws


def bazel_build(ws: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BAZEL, "--batch", f"--output_user_root={ws.parent / 'bazel-root'}", "--nohome_rc", "--noworkspace_rc",
         "build", *targets, "--spawn_strategy=worker,local", "--worker_sandboxing=false",
         "--experimental_worker_allow_json_protocol", "--experimental_worker_multiplex", "--worker_verbose"],
        cwd=ws, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def classes(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.class"))
    }


def test_bazel_drives_the_javac_worker_in_every_mode(workspace: Path) -> None:
    modes = ["proto_single", "json_single", "proto_multi", "json_multi"]
    result = bazel_build(workspace, *(f"//:{m}" for m in modes))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 worker" in result.stderr  # every compile ran on a persistent worker
    assert "Created new non-sandboxed Javac multiplex-worker" in result.stderr
    subprocess.run(["javac", "-d", "cold", "A.java", "B.java"], cwd=workspace, check=True)
    expected = classes(workspace / "cold")
    for mode in modes:
        assert classes(workspace / "bazel-bin" / f"{mode}_classes") == expected, mode


def test_bazel_shows_the_workers_compile_error(workspace: Path) -> None:
    result = bazel_build(workspace, "//:broken")
    assert result.returncode != 0
    assert (
        "Broken.java:2: error: incompatible types: int cannot be converted to String"
        in result.stderr
    )
