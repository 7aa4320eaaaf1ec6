"""Conformance of our workers against a client no one here wrote: Bazel 4.2.3 (Debian's
bazel-bootstrap) drives the javac worker as a persistent worker (singleplex and multiplex,
proto and JSON) and the GHC worker (singleplex, proto, with Bazel's input digests).

The workspaces (tests/integration/bazel_workspace/, bazel_haskell_workspace/) have only
their own Starlark rules, so Bazel needs no network. scripts/bootstrap.sh installs Bazel
and GHC; without them these tests fail, loudly.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

#: Above the 120 s default: a Bazel build may take 600 s; the suite's time guard, not a
#: measure.
pytestmark = pytest.mark.timeout(900)

WORKSPACE = REPO_ROOT / "tests" / "integration" / "bazel_workspace"
HASKELL_WORKSPACE = REPO_ROOT / "tests" / "integration" / "bazel_haskell_workspace"
JAVAC_WORKER = REPO_ROOT / "toolchains" / "java" / "javac-worker"
GHC_WORKER = REPO_ROOT / "toolchains" / "haskell" / "ghc-worker"
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


def bazel_build(
    ws: Path, *targets: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BAZEL, "--batch", f"--output_user_root={ws.parent / 'bazel-root'}", "--nohome_rc", "--noworkspace_rc",
         "build", *targets, "--spawn_strategy=worker,local", "--worker_sandboxing=false",
         "--experimental_worker_allow_json_protocol", "--experimental_worker_multiplex", "--worker_verbose",
         *extra],
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


@pytest.fixture
def haskell_workspace(tmp_path: Path) -> Path:
    assert Path(BAZEL).exists(), (
        "bazel is missing: scripts/bootstrap.sh installs Debian's bazel-bootstrap"
    )
    ws = tmp_path / "hs"
    (ws / "tools").mkdir(parents=True)
    (ws / "Shop").mkdir()
    (ws / "WORKSPACE").write_text("")
    shutil.copy(HASKELL_WORKSPACE / "defs.bzl", ws / "defs.bzl")
    shutil.copy(HASKELL_WORKSPACE / "BUILD.template", ws / "BUILD")
    (ws / "tools" / "BUILD").write_text('exports_files(["worker.sh"])\n')
    # Bazel gives actions an almost empty environment: GHC runs gcc, found through PATH.
    wrapper = ws / "tools" / "worker.sh"
    wrapper.write_text(
        f'#!/bin/sh\nexport PATH=/usr/bin:/bin GHC_WORKER_REPORT=1\nexec "{GHC_WORKER}" "$@"\n'
    )
    wrapper.chmod(0o755)
    (ws / "Shop" / "Types.hs").write_text(
        "module Shop.Types (Item (..)) where\n\ndata Item = Item String Int deriving Show\n"
    )
    for name in ("Report", "Summary"):
        (ws / "Shop" / f"{name}.hs").write_text(
            f"module Shop.{name} where\n\nimport Shop.Types\n\n"
            f"price{name} :: Item -> Int\nprice{name} (Item _ p) = p\n"
        )
    (ws / "Shop" / "Broken.hs").write_text('module Shop.Broken where\n\nx :: Int\nx = "one"\n')
    return ws


def test_bazel_drives_the_ghc_worker(haskell_workspace: Path) -> None:
    ws = haskell_workspace
    # One worker process: the three compiles run on it one after the other.
    result = bazel_build(ws, "//:report", "//:summary", extra=("--worker_max_instances=1",))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 worker" in result.stderr  # every compile ran on the persistent worker
    # Bazel sends input digests; the second importer of Shop.Types reuses its interface
    # (the worker logs what each request reused on its stderr, Bazel's worker log).
    logs = "".join(p.read_text() for p in (ws.parent / "bazel-root").rglob("bazel-workers/*.log"))
    assert "reused home interfaces: [Shop.Types]" in logs, logs
    for name, module in (("types", "Types"), ("report", "Report"), ("summary", "Summary")):
        out = ws / "bazel-bin" / name / "Shop"
        assert (out / f"{module}.o").exists() and (out / f"{module}.hi").exists()
    cold = ws / "cold"
    (cold / "Shop").mkdir(parents=True)
    for module, deps in (("Types", ""), ("Report", "-icold"), ("Summary", "-icold")):
        subprocess.run(
            ["ghc", "-c", f"Shop/{module}.hs", "-o", f"cold/Shop/{module}.o",
             "-ohi", f"cold/Shop/{module}.hi", "-i", *deps.split()],
            cwd=ws, check=True, capture_output=True,
        )  # fmt: skip
    for name, module in (("report", "Report"), ("summary", "Summary")):
        built = ws / "bazel-bin" / name / "Shop" / f"{module}.hi"
        assert built.read_bytes() == (cold / "Shop" / f"{module}.hi").read_bytes()


def test_bazel_shows_the_ghc_workers_type_error(haskell_workspace: Path) -> None:
    result = bazel_build(haskell_workspace, "//:broken")
    assert result.returncode != 0
    assert "Shop/Broken.hs:4:5: error:" in result.stderr
    assert "Couldn't match type" in result.stderr
