"""scripts/bootstrap.sh's check that a virtualenv still works (`venv_works`), run as the
script defines it: a venv links to its interpreter, and one whose Python was removed (a
pyenv uninstall) was taken as installed (BuildGrid's), or patched by `venv` in place,
keeping the dead links (the project's), on every run after."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def venv_works(venv: Path) -> bool:
    script = (REPO_ROOT / "scripts" / "bootstrap.sh").read_text()
    match = re.search(r"^venv_works\(\) \{.*?^\}$", script, re.M | re.S)
    assert match, "scripts/bootstrap.sh defines venv_works"
    done = subprocess.run(["bash", "-c", f'{match.group()}\nvenv_works "$1"', "-", str(venv)])
    return done.returncode == 0


def test_a_venv_whose_python_is_gone_does_not_work(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    os.symlink(tmp_path / "uninstalled" / "python3.11", tmp_path / "bin" / "python")
    assert not venv_works(tmp_path)


def test_a_venv_whose_python_runs_works(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    os.symlink(sys.executable, tmp_path / "bin" / "python")
    assert venv_works(tmp_path)
    assert not venv_works(tmp_path / "none")
