"""Where a daemon lives (daemon/paths.py): its files' names as strings and as paths, the
private directory, and the code stamp in its version (an edited source is a new version,
a compiled bytecode cache is not)."""

from __future__ import annotations

import compileall
import os
import stat
from pathlib import Path

import pytest

from worker_runtime.daemon.paths import DaemonPaths, code_stamp, private_dir
from worker_runtime.errors import ConfigError


def test_the_names_a_front_uses_are_the_paths_everyone_else_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_RUNTIME_DIR", str(tmp_path / "d"))
    paths = DaemonPaths.for_project(str(tmp_path), "1.0+test")
    assert paths.directory == tmp_path / "d"
    assert paths.socket == Path(paths.socket_name) == tmp_path / "d" / f"{paths.daemon_id}.sock"
    assert paths.spawn_log == Path(paths.spawn_log_name)
    assert {paths.lock.suffix, paths.state.suffix, paths.spawn_log.suffix} == {
        ".lock",
        ".json",
        ".out",
    }
    assert DaemonPaths(tmp_path / "d", paths.project_root, "1.0+test").socket == paths.socket
    assert DaemonPaths.for_project(str(tmp_path), "2.0").socket != paths.socket


def test_the_private_directory_is_made_ours_alone(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    private_dir(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    private_dir(str(directory))  # again: nothing to do


def test_a_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with pytest.raises(ConfigError, match="open to other users"):
        private_dir(directory)


def test_a_symlink_or_a_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="not a directory owned"):
        private_dir(link)
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ConfigError, match="cannot be created"):
        private_dir(afile)


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
