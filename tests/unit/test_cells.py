"""worker-runtime cells: where the Buck2 cells are, and installing them into a project."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker_runtime.cells import cells_root, install, main


def test_cells_are_found_in_the_checkout() -> None:
    root = cells_root()
    assert (root / "prelude" / "prelude.bzl").is_file()
    assert (root / "toolchains" / "BUCK").is_file()


def test_install_copies_both_cells_and_points_the_toolchains_at_the_rules(tmp_path: Path) -> None:
    target = install(tmp_path, "third-party/w", prelude_cell="workers", force=False)
    assert (target / "prelude" / "worker" / "worker_tool.bzl").is_file()
    toolchains = (target / "toolchains" / "BUCK").read_text()
    assert '"@workers//java:java_toolchain.bzl"' in toolchains and "@prelude//" not in toolchains
    # Labels of the rules' cell too (the routing constraint values that selects name).
    assert '"workers//platforms:routing_native"' in toolchains and '"prelude//' not in toolchains
    assert (target / "toolchains" / "java" / "javac-worker").stat().st_mode & 0o111
    assert (target / ".gitignore").read_text() == ".cache/\n"
    with pytest.raises(FileExistsError, match="--force"):
        install(tmp_path, "third-party/w", prelude_cell="workers", force=False)
    stale = target / "prelude" / "stale.bzl"
    stale.write_text("")
    install(tmp_path, "third-party/w", prelude_cell="workers", force=True)
    assert not stale.exists() and (target / "prelude" / "prelude.bzl").is_file()


def test_install_keeps_the_users_files(tmp_path: Path) -> None:
    """--force replaces only what the command installed, and .gitignore is appended to."""
    (tmp_path / "toolchains").mkdir()
    (tmp_path / "toolchains" / "BUCK").write_text("# the project's own\n")
    (tmp_path / ".gitignore").write_text("buck-out/\n")
    with pytest.raises(ValueError, match="not the root itself"):
        install(tmp_path, ".", prelude_cell="workers", force=True)
    (tmp_path / "w" / "prelude").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not installed by"):
        install(tmp_path, "w", prelude_cell="workers", force=True)
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / ".gitignore").write_text("secrets.env\n")
    install(tmp_path, "v", prelude_cell="workers", force=False)
    assert (tmp_path / "v" / ".gitignore").read_text() == "secrets.env\n.cache/\n"
    install(tmp_path, "v", prelude_cell="workers", force=True)
    assert (tmp_path / "v" / ".gitignore").read_text() == "secrets.env\n.cache/\n"
    assert (tmp_path / "toolchains" / "BUCK").read_text() == "# the project's own\n"


@pytest.mark.parametrize("dest", ["/abs/dir", "../outside"])
def test_install_refuses_a_place_outside_the_project(tmp_path: Path, dest: str) -> None:
    with pytest.raises(ValueError, match="inside the project"):
        install(tmp_path, dest, prelude_cell="workers", force=False)


def test_the_command_prints_the_buckconfig_to_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install", "--project-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "workers = third-party/buck2-workers/prelude" in out
    assert "toolchains_cell = worker_toolchains" in out
    assert "execution_platforms = workers//platforms:platforms" in out
    assert main(["install", "--project-root", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prelude-cell", ""], "--prelude-cell '' is not a cell name"),
        (["--toolchains-cell", "my/cell"], "--toolchains-cell 'my/cell' is not a cell name"),
        (["--prelude-cell", 'w"x'], "is not a cell name"),
        (["--toolchains-cell", "workers"], "both 'workers'"),
        (["--toolchains-cell", "prelude"], "hide Buck2's own prelude"),
    ],
)
def test_the_command_refuses_cell_names_buck2_could_not_mount(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["install", "--project-root", str(tmp_path), *flags]) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing copied


def test_the_command_refuses_a_project_root_that_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --project-root is named, not made anew with the cells inside it."""
    missing = tmp_path / "mistyped"
    assert main(["install", "--project-root", str(missing)]) == 1
    assert "is not a directory" in capsys.readouterr().err
    assert not missing.exists()


def test_the_command_warns_of_a_project_root_without_a_buckconfig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install", "--project-root", str(tmp_path)]) == 0
    assert "has no .buckconfig" in capsys.readouterr().err
    (tmp_path / ".buckconfig").write_text("[cells]\n  root = .\n")
    assert main(["install", "--project-root", str(tmp_path), "--force"]) == 0
    assert "warning" not in capsys.readouterr().err
