"""Every .bzl and BUCK file is formatted and lint-clean under buildifier."""

from __future__ import annotations

import subprocess
from pathlib import Path

from workers_dev.buck2_fake import REPO_ROOT

#: Installed by scripts/bootstrap.sh from the npm package @bazel/buildifier.
BUILDIFIER = (
    REPO_ROOT
    / ".cache"
    / "npm"
    / "node_modules"
    / "@bazel"
    / "buildifier"
    / "buildifier-linux_amd64"
)


def starlark_files() -> tuple[list[str], list[str]]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    bzl = [f for f in listed if f.endswith(".bzl") and (REPO_ROOT / f).exists()]
    build = [f for f in listed if Path(f).name == "BUCK" and (REPO_ROOT / f).exists()]
    return bzl, build


def test_buildifier_is_installed() -> None:
    assert BUILDIFIER.exists(), (
        f"{BUILDIFIER} is missing: run scripts/bootstrap.sh (it installs @bazel/buildifier)"
    )


def test_bzl_and_buck_files_are_formatted_and_lint_clean() -> None:
    bzl, build = starlark_files()
    assert bzl and build, "no .bzl or BUCK files found"
    for file_type, files in (("bzl", bzl), ("build", build)):
        result = subprocess.run(
            [str(BUILDIFIER), "--mode=check", "--lint=warn", f"--type={file_type}", *files],
            cwd=REPO_ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, (
            f"buildifier found problems (fix with --mode=fix --lint=fix):\n{result.stdout}{result.stderr}"
        )
