"""The compiler workers' launchers (toolchains/java/javac-worker, toolchains/haskell/
ghc-worker) build the worker into .cache on first use: that build serves every user (an
executor's tenants run the worker under uids of their own), so it is made readable to all
whatever the umask of whoever filled it, while the worker itself keeps the caller's
umask for what it writes."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SOURCES = {
    "java": ("class A {}\n", "A.java", ["-d", "out", "A.java"], "out/A.class"),
    "haskell": ("module A where\nx :: Int\nx = 1\n", "A.hs", ["-c", "A.hs", "-o", "A.o", "-ohi", "A.hi"], "A.o"),
}  # fmt: skip


@pytest.mark.parametrize("language", sorted(SOURCES))
def test_a_build_filled_under_umask_077_is_readable_by_every_user(
    tmp_path: Path, language: str
) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "toolchains" / language, checkout / "toolchains" / language)
    launcher = (
        checkout
        / "toolchains"
        / language
        / ("javac-worker" if language == "java" else "ghc-worker")
    )
    source, name, args, output = SOURCES[language]
    (tmp_path / name).write_text(source)
    (tmp_path / "out").mkdir()
    done = subprocess.run(
        ["sh", "-c", 'umask 077; exec "$0" "$@"', str(launcher), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cache = checkout / ".cache"
    private = [
        path
        for path in (cache, *cache.rglob("*"))
        if path.name != ".lock" and not path.stat().st_mode & stat.S_IROTH
    ]
    assert private == [], private
    # The worker kept its caller's umask: what it wrote is the caller's alone.
    assert stat.S_IMODE((tmp_path / output).stat().st_mode) & 0o077 == 0
