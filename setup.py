"""Builds the wheel with the Buck2 cells inside: prelude/ and toolchains/ are copied to
worker_runtime/cells/ (see worker_runtime/cells.py). Everything else is in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CELLS = ("prelude", "toolchains")


class BuildPyWithCells(build_py):
    def run(self) -> None:
        super().run()
        for cell in CELLS:
            if not (ROOT / cell).is_dir():
                raise SystemExit(
                    f"setup.py: the Buck2 cell {cell}/ is missing beside setup.py; build the "
                    "wheel from a checkout or from an sdist made with MANIFEST.in"
                )
            target = Path(self.build_lib) / "worker_runtime" / "cells" / cell
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(
                ROOT / cell,
                target,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".cache"),
            )


setup(cmdclass={"build_py": BuildPyWithCells})
