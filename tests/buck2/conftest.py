"""The real-Buck2 tier: runs only where a ``buck2`` binary is found (``BUCK2=`` or ``PATH``).

Without one every test here is skipped with that reason, and ``scripts/test.sh`` says
before pytest starts whether the tier will run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.buck2.harness import Buck2Project, copy_repository, find_buck2, private_dir

BUCK2 = find_buck2()


@pytest.fixture(scope="session")
def buck2() -> str:
    if BUCK2 is None:
        pytest.skip(
            "real-Buck2 tier: no buck2 binary (set BUCK2=/path/to/buck2 or put buck2 on PATH)"
        )
    return BUCK2


def make_project(buck2: str, root: Path) -> Iterator[Buck2Project]:
    """A copy of this repository as a Buck2 project, with a private daemon directory;
    Buck2's daemon and ours are stopped afterwards."""
    runtime_dir = private_dir("wrb-")
    project = Buck2Project.create(buck2, copy_repository(root), runtime_dir)
    try:
        yield project
    finally:
        project.stop()
        shutil.rmtree(runtime_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def project(buck2: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buck2Project]:
    yield from make_project(buck2, tmp_path_factory.mktemp("project"))
