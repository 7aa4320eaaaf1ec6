"""The Buck2 cells that ship with the runtime (the rules and the toolchains), and
``worker-runtime cells``: where they are, and copying them into a Buck2 project.

A wheel carries them as ``worker_runtime/cells/{prelude,toolchains}`` (``setup.py`` copies
them in at build time); run from a checkout, they are the checkout's ``prelude/`` and
``toolchains/``. Buck2 reads cells only from inside the project, so ``install`` copies them
there and prints the ``.buckconfig`` lines that mount them beside Buck2's own prelude.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from worker_runtime.errors import USAGE_EXIT_CODE

CELLS = ("prelude", "toolchains")
#: What the copy leaves out (caches that a checkout may hold).
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".cache")
DEFAULT_DEST = "third-party/buck2-workers"
#: Written into each installed cell: only a directory holding it is ever replaced.
MARKER = ".installed-by-worker-runtime"
#: A cell name that a label (``name//path:target``), a ``.buckconfig`` line and the
#: ``"@name//`` rewrite below all take as it is.
CELL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def cells_root() -> Path:
    """The directory holding ``prelude/`` and ``toolchains/``: the installed package's
    ``cells/``, else the checkout this module runs from."""
    package = Path(__file__).resolve().parent
    for root in (package / "cells", package.parent):
        if (root / "prelude" / "prelude.bzl").is_file() and (
            root / "toolchains" / "BUCK"
        ).is_file():
            return root
    raise FileNotFoundError(
        f"the Buck2 cells are missing from {package / 'cells'}: reinstall buck2-worker-runtime "
        "from a wheel built from the repository (pip wheel .)"
    )


def runtime_command() -> str:
    """The ``worker-runtime`` command of this installation, for ``[persistent_workers] runtime``."""
    beside = Path(sys.executable).parent / "worker-runtime"
    return str(beside) if beside.exists() else (shutil.which("worker-runtime") or "worker-runtime")


def buckconfig_lines(dest: str, prelude_cell: str, toolchains_cell: str) -> str:
    return (
        "[cells]\n"
        f"  {prelude_cell} = {dest}/prelude\n"
        f"  {toolchains_cell} = {dest}/toolchains\n\n"
        "[persistent_workers]\n"
        f"  runtime = {runtime_command()}\n"
        f"  toolchains_cell = {toolchains_cell}\n\n"
        "[build]\n"
        f"  execution_platforms = {prelude_cell}//platforms:platforms\n"
    )


def check_cell_names(prelude_cell: str, toolchains_cell: str) -> None:
    """Refuses cell names the printed ``.buckconfig`` lines could not mount as two cells."""
    for flag, name in (("--prelude-cell", prelude_cell), ("--toolchains-cell", toolchains_cell)):
        if not CELL_NAME.fullmatch(name):
            raise ValueError(
                f"{flag} {name!r} is not a cell name: use letters, digits, `_`, `-` and `.` "
                "(not first), as in `workers`"
            )
    if prelude_cell == toolchains_cell:
        raise ValueError(
            f"--prelude-cell and --toolchains-cell are both {prelude_cell!r}: the rules and the "
            "toolchains are two cells and need two names"
        )
    if toolchains_cell == "prelude":
        raise ValueError(
            "--toolchains-cell 'prelude' would hide Buck2's own prelude: choose another name"
        )


def mounted_cells(project: Path) -> dict[str, tuple[str, str]]:
    """The cells the project's own config files mount, by name: its ``[cells]`` section
    (or, without one, ``[repositories]``), read as Buck2 reads them (``.buckconfig.d/``,
    then ``.buckconfig``, then ``.buckconfig.local``, later values winning; lines joined
    at a trailing backslash; ``#`` and ``;`` lines skipped). Included files are not
    followed. Each is ``(path, where)``: the path as written, normalised, and the line
    that mounts it (``FILE: [section] name = path``)."""
    sections: dict[str, dict[str, tuple[str, str]]] = {}
    files = _config_files_below(project / ".buckconfig.d")
    for path in [*files, project / ".buckconfig", project / ".buckconfig.local"]:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        section = ""
        pending = ""
        for raw in text.splitlines():
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1]
                continue
            pending = ""
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line[1:].split(" #", 1)[0].rstrip("]").strip()
            elif "=" in line:
                key, value = (part.strip() for part in line.split("=", 1))
                where = f"{path.relative_to(project)}: [{section}] {key} = {value}"
                sections.setdefault(section, {})[key] = (os.path.normpath(value), where)
    return sections.get("cells", sections.get("repositories", {}))


def _config_files_below(folder: Path) -> list[Path]:
    """The files below ``folder``, by name, its directories' included (symbolic links
    are neither, as Buck2 sees them)."""
    if not folder.is_dir():
        return []
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            continue
        if entry.is_dir():
            files += _config_files_below(entry)
        elif entry.is_file():
            files.append(entry)
    return files


def check_names_are_free(project: Path, dest: str, names: dict[str, str]) -> list[str]:
    """Refuses a cell name (``names``: cell directory -> name) that the project already
    mounts elsewhere: its ``.buckconfig`` would then name the cell twice, and Buck2 take
    one of the two paths. Returns the names it already mounts where ``dest`` puts them."""
    mounted = mounted_cells(project)
    already = []
    for cell, name in names.items():
        wanted = os.path.normpath(os.path.join(dest, cell))
        if name not in mounted:
            continue
        path, where = mounted[name]
        if path != wanted:
            flag = "--prelude-cell" if cell == "prelude" else "--toolchains-cell"
            raise ValueError(
                f"the project's config already mounts a cell named {name!r} at {path}, not "
                f"at {wanted} ({where}): choose another name with {flag}, or remove that "
                "line first"
            )
        already.append(name)
    return already


def install(project: Path, dest: str, *, prelude_cell: str, force: bool) -> Path:
    """Copies the cells into ``project/dest``; an existing copy is replaced only with ``force``."""
    if not project.is_dir():
        raise FileNotFoundError(
            f"the project root {project} is not a directory: pass the Buck2 project's root "
            "(the directory holding its .buckconfig) as --project-root"
        )
    parts = Path(dest).parts
    if Path(dest).is_absolute() or ".." in parts:
        raise ValueError(f"{dest}: give a path inside the project (Buck2 cells must be)")
    if not [p for p in parts if p != "."]:
        raise ValueError(
            f"{dest}: give a directory below the project root, not the root itself, whose "
            "prelude/ and toolchains/ are the project's own"
        )
    target = project / dest
    source = cells_root()
    for cell in CELLS:
        if not (target / cell).exists():
            continue
        if not (target / cell / MARKER).exists():
            raise FileExistsError(
                f"{target / cell} exists and was not installed by `worker-runtime cells`: "
                "choose another place"
            )
        if not force:
            raise FileExistsError(f"{target / cell} exists: pass --force to replace it")
    for cell in CELLS:
        shutil.rmtree(target / cell, ignore_errors=True)
        shutil.copytree(source / cell, target / cell, ignore=IGNORED)
        (target / cell / MARKER).write_text(
            "Installed by `worker-runtime cells install`; replaced by `--force`.\n"
        )
    # The toolchains load the rules as @prelude// and name their targets as prelude//
    # (the routing constraint values), which in the project is Buck2's own prelude: point
    # both at the name the rules are mounted under.
    if prelude_cell != "prelude":
        for path in (target / "toolchains").rglob("*"):
            if path.name == "BUCK" or path.suffix == ".bzl":
                text = path.read_text()
                text = text.replace('"@prelude//', f'"@{prelude_cell}//')
                path.write_text(text.replace('"prelude//', f'"{prelude_cell}//'))
    # The toolchain scripts build the workers into <dest>/.cache: keep it out of git.
    ignore = target / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if ".cache/" not in lines:
        ignore.write_text("".join(f"{line}\n" for line in [*lines, ".cache/"]))
    return target


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="worker-runtime cells",
        description="The Buck2 cells of this runtime: its rules (prelude) and toolchains.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("path", help="print the directory holding prelude/ and toolchains/")
    add = sub.add_parser("install", help="copy the cells into a Buck2 project")
    add.add_argument("dest", nargs="?", default=DEFAULT_DEST, help=f"(default: {DEFAULT_DEST})")
    add.add_argument("--project-root", default=".", help="the project (default: .)")
    add.add_argument("--prelude-cell", default="workers", help="cell name of the rules")
    add.add_argument(
        "--toolchains-cell", default="worker_toolchains", help="cell name of the toolchains"
    )
    add.add_argument("--force", action="store_true", help="replace an existing copy")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return USAGE_EXIT_CODE if exc.code else 0
    try:
        if args.command == "path":
            print(cells_root())
            return 0
        check_cell_names(args.prelude_cell, args.toolchains_cell)
        already = check_names_are_free(
            Path(args.project_root),
            args.dest,
            {"prelude": args.prelude_cell, "toolchains": args.toolchains_cell},
        )
        target = install(
            Path(args.project_root), args.dest, prelude_cell=args.prelude_cell, force=args.force
        )
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"worker-runtime cells: error: {exc}\n")
        return 1
    if not (Path(args.project_root) / ".buckconfig").is_file():
        sys.stderr.write(
            f"worker-runtime cells: warning: {args.project_root} has no .buckconfig: is it the "
            "project's root? The lines below go in the root's .buckconfig.\n"
        )
    mounted = f" (its [cells] already mounts {' and '.join(already)} there)" if already else ""
    print(
        f"Installed the cells into {target}. Add to .buckconfig (or merge with what is "
        f"there{mounted}):\n\n"
        + buckconfig_lines(args.dest, args.prelude_cell, args.toolchains_cell)
    )
    return 0
