"""Writing a file so that a reader sees its old contents or its new ones, never a part:
a temporary file of its own in the same directory, then a rename over the target. Shared
by the CAS client's outputs, the executor's blob cache and tenant map, the daemon's state
and the cluster's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Writes ``data`` to ``target`` with permissions ``mode``; the temporary file is
    removed if anything fails (an interrupt included)."""
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), mode)  # mkstemp makes it 0600
            out.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
