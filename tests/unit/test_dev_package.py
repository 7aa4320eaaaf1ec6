"""Development code (the Buck2 stand-in, the demo, the docs generator) lives in
workers_dev/, outside the package Buck2 launches; `worker-runtime demo` still works from a
checkout and says what to do elsewhere."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.imports import modules_loaded_by


def test_the_runtime_package_never_imports_dev_code() -> None:
    for path in (REPO_ROOT / "worker_runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                if name.startswith("workers_dev") or name.startswith("tests"):
                    # The one exception: `worker-runtime demo`, which finds the checkout.
                    assert path.name == "cli.py", f"{path} imports {name}"


def test_the_demo_starts_from_the_console_script_in_any_directory(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("worker-runtime")
    result = subprocess.run(
        [str(script), "demo", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--actions" in result.stdout


def test_without_a_checkout_the_demo_says_what_to_do(tmp_path: Path) -> None:
    shutil.copytree(REPO_ROOT / "worker_runtime", tmp_path / "worker_runtime")
    result = subprocess.run(
        [sys.executable, "-m", "worker_runtime", "demo"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "runs from a checkout of buck2-persistent-workers" in result.stderr
    assert "scripts/demo.sh" in result.stderr


def test_the_venv_starts_without_an_import_hook() -> None:
    """scripts/bootstrap.sh installs the checkout as a plain path (editable_mode=compat):
    setuptools' import finder would cost every start in the venv, and so every worker
    front's at the start of every Buck2 command, about 11 ms (it imports pathlib and re)."""
    assert modules_loaded_by("", ["pathlib", "re"]) == [], "the venv's start imports them"


def test_the_command_reaches_buck2s_socket_with_nothing_but_its_entry_imported() -> None:
    """The installed `worker-runtime` is bin/worker-runtime (pip's console-script wrapper
    imports `re`), and the entry reads the config and listens without `json`, `re`,
    `enum` or `socket`: on a slow machine they cost a front the 50 ms poll."""
    script = Path(sys.executable).with_name("worker-runtime")
    assert (
        script.read_text().split("\n", 1)[1]
        == (REPO_ROOT / "bin" / "worker-runtime").read_text().split("\n", 1)[1]
    )
    code = "import worker_runtime.entry, worker_runtime.daemon.handover"
    assert modules_loaded_by(code, ["re", "json", "enum", "socket", "selectors"]) == []
