"""scripts/runtime_shebang.sh: the worker-runtime command starts from a venv whose path
holds a space (the kernel splits a '#!' line there: "bad interpreter"), and a usual one
is left as pip wrote it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

FIXER = REPO_ROOT / "scripts" / "runtime_shebang.sh"


def fake_install(venv_parent: Path) -> Path:
    """A venv (no pip: quick) that sees this checkout, with bin/worker-runtime as pip
    installs it: the venv's python on its first line."""
    venv = venv_parent / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv)}))
    (purelib / "checkout.pth").write_text(f"{REPO_ROOT}\n")
    script = venv / "bin" / "worker-runtime"
    body = (REPO_ROOT / "bin" / "worker-runtime").read_text().split("\n", 1)[1]
    script.write_text(f"#!{venv / 'bin' / 'python'}\n{body}")
    script.chmod(0o755)
    return script


def run(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)


def test_a_venv_path_with_a_space_gets_a_script_that_starts(tmp_path: Path) -> None:
    script = fake_install(tmp_path / "with space and 'quotes'")
    with pytest.raises(FileNotFoundError):  # as pip leaves it: "bad interpreter"
        run(script)
    for _ in range(2):  # idempotent
        subprocess.run(["bash", str(FIXER), str(script.parent.parent)], check=True)
        started = run(script)
        assert started.returncode == 0, started.stderr
        assert "usage: worker-runtime" in started.stdout
    assert script.read_text().startswith("#!/bin/sh\n")
    # Through a symlink elsewhere (~/bin/worker-runtime, say) it still finds its python.
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    (elsewhere / "worker-runtime").symlink_to(script)
    linked = run(elsewhere / "worker-runtime")
    assert linked.returncode == 0 and "usage: worker-runtime" in linked.stdout, linked.stderr


def test_a_usual_venv_path_is_left_as_pip_wrote_it(tmp_path: Path) -> None:
    script = fake_install(tmp_path / "plain")
    before = script.read_text()
    subprocess.run(["bash", str(FIXER), str(script.parent.parent)], check=True)
    assert script.read_text() == before
    assert run(script).returncode == 0
