"""The real-Buck2 tier's harness, checked where there is no Buck2: finding the binary, and
the project copy it builds in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.buck2.harness import REPO_ROOT, copy_repository, find_buck2


def test_a_bad_buck2_variable_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCK2", "/nonexistent/buck2")
    with pytest.raises(FileNotFoundError, match="BUCK2=/nonexistent/buck2"):
        find_buck2()


def test_buck2_is_found_by_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "buck2"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BUCK2", str(fake))
    assert find_buck2() == str(fake)


def test_the_project_copy_has_the_tracked_files_and_the_checkouts_venv(tmp_path: Path) -> None:
    project = copy_repository(tmp_path / "p")
    assert (project / ".buckconfig").read_text() == (REPO_ROOT / ".buckconfig").read_text()
    assert (project / "examples" / "java" / "BUCK").is_file()
    assert (project / ".venv").resolve() == (REPO_ROOT / ".venv").resolve()
    assert not (project / "buck-out").exists()
