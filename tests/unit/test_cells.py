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


@pytest.mark.parametrize(
    ("config_file", "text", "flag"),
    [
        (".buckconfig", "[cells]\n  root = .\n  workers = vendor/rules\n", "--prelude-cell"),
        (".buckconfig.local", "[cells]\n  worker_toolchains = tc\n", "--toolchains-cell"),
        (".buckconfig.d/cells", "[repositories]\n  workers = \\\n    vendor/rules\n", None),
        (".buckconfig.d/more/cells", "[cells]\n  workers = vendor/rules\n", None),
    ],
)
def test_the_command_refuses_a_cell_name_the_project_mounts_elsewhere(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    config_file: str,
    text: str,
    flag: str | None,
) -> None:
    """The printed lines would name the cell twice, and Buck2 take one of the two paths:
    refused before anything is copied, naming the line and what to do."""
    (tmp_path / config_file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / config_file).write_text(text)
    before = sorted(tmp_path.rglob("*"))
    assert main(["install", "--project-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "already mounts a cell named" in err
    assert f"({config_file}: [" in err  # the line that mounts it
    assert flag is None or flag in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing copied


def test_a_cells_section_hides_the_repositories_one_as_under_buck2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".buckconfig").write_text(
        "[repositories]\n  workers = elsewhere\n[cells]\n  root = .\n# workers = elsewhere\n"
    )
    assert main(["install", "--project-root", str(tmp_path)]) == 0
    assert "already mounts" not in capsys.readouterr().out


def test_the_command_says_when_the_project_already_mounts_the_cells_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reinstall (--force) into a project already set up: nothing to add to [cells]."""
    (tmp_path / ".buckconfig").write_text(
        "[cells]\n  root = .\n  workers = ./third-party/buck2-workers/prelude\n"
        "  worker_toolchains = third-party/buck2-workers/toolchains/\n"
    )
    assert main(["install", "--project-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "its [cells] already mounts workers and worker_toolchains there" in out
