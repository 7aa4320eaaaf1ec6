"""The worker key: what must be equal for two requests to share a backend process.

Key = backend argv + the environment variables the config names + protocol +
multiplex + the digests of the tool input files. Tool files are re-hashed only when
their stat (size, mtime, inode) changes, so checking them costs a ``stat`` per request.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from worker_runtime.digests import DigestCache
from worker_runtime.errors import RequestError


@dataclass(frozen=True, slots=True)
class WorkerKey:
    """Identity of a backend process; two requests with equal keys may share one."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    protocol: str
    multiplex: bool
    tool_digests: tuple[tuple[str, str], ...]
    short: str = field(default="", compare=False, hash=False)

    @property
    def family(self) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], str, bool]:
        """Everything but the tool digests: a new member of a family retires the old ones."""
        return (self.argv, self.env, self.protocol, self.multiplex)


def make_key(
    argv: tuple[str, ...],
    env: tuple[tuple[str, str], ...],
    protocol: str,
    multiplex: bool,
    tool_digests: tuple[tuple[str, str], ...],
) -> WorkerKey:
    hasher = hashlib.sha256()
    for part in (argv, env, protocol, multiplex, tool_digests):
        hasher.update(repr(part).encode("utf-8"))
        hasher.update(b"\0")
    return WorkerKey(argv, env, protocol, multiplex, tool_digests, hasher.hexdigest()[:12])


class ToolDigests:
    """SHA-256 of the tool input files, through the shared digest cache; a tool input
    that cannot be read is a RequestError that says how to fix it."""

    def __init__(self, paths: tuple[str, ...], cwd: str, cache: DigestCache) -> None:
        self._paths = paths
        self._cwd = cwd
        self._cache = cache

    def current(self) -> tuple[tuple[str, str], ...]:
        """Digests of every tool input as it is on disk now."""
        return tuple((path, self._digest(path)) for path in self._paths)

    def _digest(self, path: str) -> str:
        try:
            return self._cache.read(os.path.join(self._cwd, path))
        except OSError as exc:
            raise RequestError(
                f"tool input {path!r} cannot be read ({exc.strerror}); it was named with "
                "--tool-input or in the config's tool_inputs: build it or fix the path"
            ) from None
