"""The scratch directory a benchmark works in: made with the mode it asks for and removed
however the benchmark ends."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def scratch_dir(prefix: str, mode: int | None = None, parent: str | None = None) -> Iterator[Path]:
    """A new directory named ``prefix``… in ``parent`` (the default temporary directory if
    None), private unless ``mode`` says otherwise (tenant uids and sandboxes must reach
    into some), and removed with all in it on the way out."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        if mode is not None:
            path.chmod(mode)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
