"""Buck2's own RE client against the embedded engine (`worker-runtime cluster up`): the
[buck2_re_client] settings `cluster up` prints are all a Buck2 project needs to run its
actions remotely on our executor (capabilities, CAS, action cache and Execute over TCP)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.buck2.harness import Buck2Project, private_dir
from tests.clusters import cluster, private_cluster

FIXTURE = Path(__file__).parent / "fixtures" / "remote_engine"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def engine_settings() -> Iterator[str]:
    """The [buck2_re_client] section `cluster up` printed for a one-executor engine."""
    with private_cluster() as directory:
        up = cluster("up", "--executors", "1", "--dir", str(directory))
        assert up.returncode == 0, up.stderr
        yield up.stdout[up.stdout.index("[buck2_re_client]") :]


def remote_project(buck2: str, root: Path, settings: str) -> Buck2Project:
    (root / "prelude").mkdir(parents=True)
    (root / "prelude" / "prelude.bzl").write_text("")
    (root / "pkg").mkdir()
    shutil.copy(FIXTURE / "pkg" / "defs.bzl.fixture", root / "pkg" / "defs.bzl")
    shutil.copy(FIXTURE / "pkg" / "BUCK.fixture", root / "pkg" / "BUCK")
    (root / ".buckconfig").write_text(
        "[cells]\nroot = .\nprelude = prelude\n\n"
        "[build]\nexecution_platforms = root//pkg:platforms\n\n"
        "[parser]\ntarget_platform_detector_spec = target:root//...->root//pkg:target\n\n"
        + settings
    )
    return Buck2Project.create(buck2, root, private_dir("wrr-"))


def test_buck2_builds_remotely_on_the_embedded_engine(
    buck2: str, engine_settings: str, tmp_path: Path
) -> None:
    project = remote_project(buck2, tmp_path / "project", engine_settings)
    try:
        built = project.run("build", "//pkg:hello", "--show-full-output")
        assert "remote: 1" in built.stderr, built.stderr  # Buck2's own count
        output = Path(built.stdout.split()[-1])
        assert output.read_text() == "built-remotely\n"
        # Built again from a clean buck-out: the action cache answers.
        project.run("clean")
        again = project.run("build", "//pkg:hello")
        assert "cached: 1" in again.stderr, again.stderr
    finally:
        project.kill()
        shutil.rmtree(project.env["WORKER_RUNTIME_DIR"], ignore_errors=True)
