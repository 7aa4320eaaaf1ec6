"""Placing a remote action's outputs: each is first written beside where it goes
(a hidden temporary file or directory in the same directory, so the final step is a
rename), then all are put in place by ``commit`` or removed by ``discard``. Routing
`race` decides between the two only once the outputs are ready."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


class StagedOutputs:
    def __init__(self) -> None:
        #: (staged path, final path)
        self._entries: list[tuple[Path, Path]] = []

    def file(self, target: Path, data: bytes, executable: bool) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, staged = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.remote-")
        self._entries.append((Path(staged), target))
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(staged, 0o755 if executable else 0o644)

    def file_path(self, target: Path, executable: bool) -> Path:
        """An empty staged file for ``target``, for the caller to write (a large output,
        streamed to it rather than held in memory)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, staged = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.remote-")
        os.close(handle)
        self._entries.append((Path(staged), target))
        os.chmod(staged, 0o755 if executable else 0o644)
        return Path(staged)

    def directory(self, target: Path) -> Path:
        """An empty staging directory for ``target``, for the caller to fill."""
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.remote-"))
        self._entries.append((staged, target))
        return staged

    def commit(self) -> None:
        """Puts every output in place; what was there before is replaced."""
        for staged, target in self._entries:
            if staged.is_dir():
                trash = None
                if target.is_dir() and not target.is_symlink():
                    trash = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
                    os.replace(target, trash / "old")
                elif target.exists() or target.is_symlink():
                    target.unlink()
                os.replace(staged, target)
                if trash is not None:
                    shutil.rmtree(trash, ignore_errors=True)
            else:
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(staged, target)
        self._entries.clear()

    def discard(self) -> None:
        for staged, _ in self._entries:
            if staged.is_dir():
                shutil.rmtree(staged, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()
        self._entries.clear()
