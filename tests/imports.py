"""What a fresh interpreter has imported after some code: a worker's start costs its
imports, so tests keep the heavy modules off the paths Buck2 waits for."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable


def modules_loaded_by(code: str, modules: Iterable[str], *argv: str) -> list[str]:
    """Which of ``modules`` a new ``python -c code argv...`` has loaded once ``code`` ran
    (its assertions failing the test too), sorted."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {tuple(modules)!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    return loaded
