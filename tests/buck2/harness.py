"""Runs a real ``buck2`` on a copy of this repository: the project, its commands, our daemon.

The real-Buck2 tier needs a ``buck2`` binary (``BUCK2=/path`` or ``buck2`` on ``PATH``);
without one, ``find_buck2`` returns None and the tier is skipped, which ``scripts/test.sh``
says plainly. Each project is a copy of the tracked files in a temporary directory, so
Buck2's daemon and ``buck-out`` never touch the checkout; ``.venv`` and ``.cache`` are
symlinks to the checkout's (the runtime, and the javac and GHC workers already built).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
#: What the Haskell example's binary prints (the Java one's is in tests/starlark).
HASKELL_EXPECTED = (REPO_ROOT / "examples" / "haskell" / "expected_output.txt").read_text()
#: Long enough for a first build that also builds the GHC worker (about a minute here).
COMMAND_TIMEOUT_S = 1200


def find_buck2() -> str | None:
    """The buck2 binary to test with: ``$BUCK2``, else ``buck2`` on ``PATH``, else None."""
    given = os.environ.get("BUCK2")
    if given:
        path = shutil.which(given)
        if path is None:
            raise FileNotFoundError(f"BUCK2={given} is not an executable file")
        return os.path.abspath(path)  # commands run in the project copy
    return shutil.which("buck2")


def tracked_files(root: Path = REPO_ROOT) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (root / name).exists()]


def copy_tracked_files(dest: Path) -> Path:
    """Copies the tracked files of this checkout into ``dest``."""
    for name in tracked_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    return dest


def config_flags(config: tuple[str, ...]) -> list[str]:
    """``-c section.key=value`` for each setting, as buck2 takes them."""
    return [flag for setting in config for flag in ("-c", setting)]


def copy_repository(dest: Path) -> Path:
    """Copies the tracked files of this checkout into ``dest``, with ``.venv`` and ``.cache``
    linked to the checkout's."""
    copy_tracked_files(dest)
    for shared in (".venv", ".cache"):
        (REPO_ROOT / shared).mkdir(exist_ok=True)
        (dest / shared).symlink_to(REPO_ROOT / shared)
    return dest


@dataclass
class Buck2Project:
    """A Buck2 project on disk and the ``buck2`` that drives it.

    ``env`` is the environment of every command: it gives our daemon a private directory
    (``WORKER_RUNTIME_DIR``), which Buck2's daemon passes on to the workers it starts.
    """

    buck2: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    #: The worker-runtime that Buck2 launches here (a daemon answers only its own version).
    runtime_exe: Path = REPO_ROOT / ".venv" / "bin" / "worker-runtime"

    @classmethod
    def create(cls, buck2: str, root: Path, runtime_dir: Path) -> Buck2Project:
        env = dict(os.environ)
        env["WORKER_RUNTIME_DIR"] = str(runtime_dir)
        # Buck2 must not pick up a daemon or settings of the developer's own.
        env.pop("BUCK2_DAEMON_UUID", None)
        return cls(buck2=buck2, root=root, env=env)

    def run(
        self, *args: str, check: bool = True, timeout_s: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """``buck2 ARGS`` in the project; fails the test with Buck2's output if ``check``."""
        result = subprocess.run(
            [self.buck2, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
        self.log.append(f"$ buck2 {' '.join(args)}  -> {result.returncode}")
        if check and result.returncode != 0:
            raise AssertionError(
                f"buck2 {' '.join(args)} failed ({result.returncode}):\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-8000:]}"
            )
        return result

    def build(
        self, *targets: str, config: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        return self.run("build", *config_flags(config), *targets)

    def output_of(self, target: str, config: tuple[str, ...] = ()) -> Path:
        """The default output of ``target``, built."""
        shown = self.run("build", *config_flags(config), target, "--show-full-output")
        return Path(shown.stdout.split()[-1])

    def runtime(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``worker-runtime ARGS`` about this project's daemon."""
        result = subprocess.run(
            [
                str(self.runtime_exe),
                *args,
                "--project-root",
                str(self.root),
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"worker-runtime {' '.join(args)}: {result.stderr}")
        return result

    def daemon_status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(self.runtime("status", "--json").stdout)
        return status

    def kill(self) -> None:
        """``buck2 kill``: Buck2's own daemon goes (and with it, its workers' fronts)."""
        self.run("kill", check=False, timeout_s=120)

    def stop(self) -> None:
        """Stops Buck2's daemon and ours."""
        self.kill()
        self.runtime("stop", check=False)


def private_dir(prefix: str) -> Path:
    """A short private directory (socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
