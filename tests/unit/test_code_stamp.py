"""The code stamp in a daemon's version (daemon/paths.py): an edited source is a new
version, a compiled bytecode cache is not."""

from __future__ import annotations

import compileall
import os
from pathlib import Path

from worker_runtime.daemon.paths import code_stamp


def make_package(root: Path) -> Path:
    package = root / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "mod.py").write_text("VALUE = 1\n")
    return package


def test_an_edited_source_changes_the_stamp(tmp_path: Path) -> None:
    package = make_package(tmp_path)
    before = code_stamp(package)
    assert code_stamp(package) == before
    source = package / "sub" / "mod.py"
    source.write_text("VALUE = 22\n")
    assert code_stamp(package) != before


def test_a_touched_source_changes_the_stamp(tmp_path: Path) -> None:
    package = make_package(tmp_path)
    before = code_stamp(package)
    source = package / "sub" / "mod.py"
    info = source.stat()
    os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    assert code_stamp(package) != before


def test_compiled_bytecode_leaves_the_stamp_alone(tmp_path: Path) -> None:
    package = make_package(tmp_path)
    before = code_stamp(package)
    assert compileall.compile_dir(package, quiet=1, force=True)
    assert list(package.rglob("__pycache__/*.pyc"))
    # Even a file named like a source inside a cache directory is not one.
    (package / "__pycache__" / "stray.py").write_text("")
    assert code_stamp(package) == before
