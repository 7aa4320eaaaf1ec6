"""The shared @argfile test vectors (tests/vectors/argfiles.json, rule in docs/argfiles.md):
loading them, laying a case out in a directory, and checking what an expander made of it.

Every expander's tests (Python front, remote executor, javac worker, GHC worker,
ghc-argfile) go through this module, so they all check the same cases the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker_runtime.errors import RUNTIME_ERROR_EXIT_CODE

VECTORS = Path(__file__).resolve().parent / "vectors" / "argfiles.json"

#: The exit code of an action whose argument files cannot be expanded, in every path.
ARGFILE_EXIT_CODE = RUNTIME_ERROR_EXIT_CODE


@dataclass(frozen=True)
class Case:
    index: int
    name: str
    files: dict[str, bytes]
    symlinks: dict[str, str]
    dirs: tuple[str, ...]
    command: list[str]
    #: The expanded argv, or None when the case is an error.
    argv: list[str] | None
    #: Substrings the error message must contain (empty when the case expands).
    error: tuple[str, ...]

    def materialize(self, root: Path) -> Path:
        """Lays the case out in a fresh directory under ``root``; returns that directory."""
        where = root / f"case-{self.index}"
        where.mkdir(parents=True)
        for name, data in self.files.items():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            (where / name).write_bytes(data)
        for name, target in self.symlinks.items():
            os.symlink(target, where / name)
        for name in self.dirs:
            (where / name).mkdir(parents=True, exist_ok=True)
        return where

    def check(self, argv: list[str] | None, error: str | None, who: str) -> None:
        """Fails unless ``argv`` (or ``error``, the message of a failed expansion) is what
        the case expects."""
        if self.argv is not None:
            assert error is None, f"{who}: {self.name}: unexpected error {error!r}"
            assert argv == self.argv, f"{who}: {self.name}"
        else:
            assert argv is None, f"{who}: {self.name}: expected an error, got {argv!r}"
            assert error is not None
            for part in self.error:
                assert part in error, f"{who}: {self.name}: {part!r} not in {error!r}"


def _content(value: str | dict[str, str]) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes.fromhex(value["hex"])


def _case(index: int, raw: dict[str, Any]) -> Case:
    return Case(
        index=index,
        name=raw["name"],
        files={name: _content(value) for name, value in raw.get("files", {}).items()},
        symlinks=dict(raw.get("symlinks", {})),
        dirs=tuple(raw.get("dirs", ())),
        command=list(raw["command"]),
        argv=raw.get("argv"),
        error=tuple(raw.get("error", ())),
    )


CASES: list[Case] = [
    _case(index, raw) for index, raw in enumerate(json.loads(VECTORS.read_text("utf-8"))["cases"])
]


def parametrize_cases() -> pytest.MarkDecorator:
    """``@parametrize_cases()`` runs a test once per case (argument ``case``)."""
    return pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


def json_outcome(returncode: int, stdout: str, stderr: str) -> tuple[list[str] | None, str | None]:
    """(argv, error) of a one-shot expander that prints its argv as a JSON array, or fails
    with the argfile exit code and a message on stderr."""
    if returncode == ARGFILE_EXIT_CODE:
        return None, stderr
    assert returncode == 0, stderr
    argv: list[str] = json.loads(stdout)
    return argv, None
