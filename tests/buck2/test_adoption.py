"""Adoption in an existing Buck2 project, exactly as docs/adoption.md says: a project
made by ``buck2 init`` (Buck2's bundled prelude as ``prelude``), the runtime installed
with pip from a wheel built from this repository, and the cells that the wheel carries
installed by ``worker-runtime cells install`` and mounted as ``workers`` and
``worker_toolchains``. The Java and Haskell examples build on warm workers there, and
the bundled prelude's own rules go on working beside ours."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.buck2.harness import (
    HASKELL_EXPECTED,
    REPO_ROOT,
    Buck2Project,
    copy_tracked_files,
    private_dir,
)
from tests.starlark.test_java_rules import EXPECTED_OUTPUT as JAVA_EXPECTED

pytestmark = pytest.mark.timeout(1800)


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done.stdout


def install_runtime_from_a_wheel(tmp: Path) -> Path:
    """``pip wheel`` this repository (a copy of its tracked files, so that setuptools'
    build/ stays out of the checkout), then ``pip install`` it into a fresh virtualenv.
    Needs the package index, for the build backend and the runtime's dependencies."""
    source = copy_tracked_files(tmp / "source")
    wheels = tmp / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source)
    (wheel,) = wheels.glob("buck2_worker_runtime-*.whl")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel)
    return venv / "bin" / "worker-runtime"


def copy_example(name: str, dest: Path) -> None:
    """An example of this repository as a package of the project, loading from @workers."""
    shutil.copytree(REPO_ROOT / "examples" / name, dest)
    build = dest / "BUCK"
    build.write_text(
        build.read_text().replace('"@prelude//:prelude.bzl"', '"@workers//:prelude.bzl"')
    )


@pytest.fixture(scope="module")
def adopted(buck2: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buck2Project]:
    tmp = tmp_path_factory.mktemp("adoption")
    runtime = install_runtime_from_a_wheel(tmp)
    root = tmp / "repo"
    runtime_dir = private_dir("wra-")
    project = Buck2Project.create(buck2, root, runtime_dir)
    project.runtime_exe = runtime
    try:
        run(buck2, "init", root, cwd=tmp)
        printed = run(runtime, "cells", "install", "--project-root", root)
        config = printed.split("\n\n", 1)[1]
        with (root / ".buckconfig").open("a") as buckconfig:
            buckconfig.write("\n" + config)
        copy_example("java", root / "java")
        copy_example("haskell", root / "haskell")
        (root / "hello").mkdir()
        (root / "hello" / "BUCK").write_text(
            '# The bundled prelude\'s own rules, beside ours.\ngenrule(name = "hello", out = "hello.txt", cmd = "echo hello > $OUT")\n'
        )
        yield project
    finally:
        project.stop()
        shutil.rmtree(runtime_dir, ignore_errors=True)


def test_the_guide_mounts_the_cells_from_the_wheel(adopted: Buck2Project) -> None:
    buckconfig = (adopted.root / ".buckconfig").read_text()
    assert "prelude = bundled" in buckconfig  # Buck2's own prelude stays the prelude
    assert "workers = third-party/buck2-workers/prelude" in buckconfig
    runtime = [line for line in buckconfig.splitlines() if line.strip().startswith("runtime =")]
    assert runtime and "/venv/bin/worker-runtime" in runtime[0]
    assert str(REPO_ROOT) not in buckconfig


def test_examples_build_and_run_on_warm_workers(adopted: Buck2Project) -> None:
    adopted.build("//java:bookshop", "//haskell:bookshop", "//hello:hello")
    assert adopted.run("run", "//java:bookshop").stdout == JAVA_EXPECTED
    assert adopted.run("run", "//haskell:bookshop").stdout == HASKELL_EXPECTED
    status = adopted.daemon_status()
    tools = {b["tool"] for b in status["backends"] if b["requests_served"] > 0}
    assert any("javac-worker" in t for t in tools) and any("ghc-worker" in t for t in tools)
    hello = adopted.output_of("//hello:hello")
    assert hello.read_text() == "hello\n"
