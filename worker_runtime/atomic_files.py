"""Writing a file so that a reader sees its old contents or its new ones, never a part:
a temporary file of its own in the same directory, then a rename over the target. Shared
by the CAS client's outputs (streamed, for a large blob), the executor's blob cache and
tenant map, the daemon's state and the cluster's."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(target: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file to write, which becomes ``target`` (with permissions ``mode``) once the
    block ends; if the block raises (an interrupt included), the temporary file is
    removed and ``target`` is left as it was."""
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), mode)  # mkstemp makes it 0600
            yield out
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Writes ``data`` to ``target`` with permissions ``mode``, atomically."""
    with atomic_writer(target, mode) as out:
        out.write(data)
