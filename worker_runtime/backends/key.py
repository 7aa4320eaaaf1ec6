"""The worker key: what must be equal for two requests to share a worker process, on
this machine (the daemon's backends) or on the executor (remote persistent workers).

Key = the worker's startup command + the environment it is part of + protocol +
multiplex + the digests of its tool files (+ the tenant, on the executor). Its
``digest`` is the remote persistent worker convention's ``persistentWorkerKey`` (the
client sends it, the executor recomputes it: remote/convention.py). Tool files are
re-hashed only when their stat changes, so checking them costs a ``stat`` per request.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from worker_runtime.digests import DigestCache
from worker_runtime.errors import RequestError

#: Appended to the startup command of every persistent worker (Bazel's convention).
PERSISTENT_WORKER_FLAG = "--persistent_worker"


@dataclass(frozen=True, slots=True)
class WorkerKey:
    """Identity of a worker process; two requests with equal keys may share one."""

    #: The startup command, without ``--persistent_worker`` (added when it is started).
    argv: tuple[str, ...]
    #: The environment that is part of the identity, sorted by name.
    env: tuple[tuple[str, str], ...]
    #: The wire format: "proto" or "json".
    protocol: str
    multiplex: bool
    #: (path, SHA-256 hex) of each tool file, sorted by path.
    tool_digests: tuple[tuple[str, str], ...]
    #: The tenant (REAPI instance name) on the executor; "" on this machine.
    instance: str = ""
    #: Whether its sandbox on the executor has the host's network (never shared with a
    #: worker that has none).
    network: bool = False
    #: SHA-256 (hex) of the tool files, the startup command with ``--persistent_worker``,
    #: the environment and the protocol, not of the tenant or multiplex: for a key the
    #: client or the executor builds by the convention, the persistentWorkerKey. A local
    #: key's env holds only the key_env values, so its digest is just a name for logs.
    digest: str = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        canonical = json.dumps(
            {
                "tools": sorted(self.tool_digests),
                "startup": [*self.argv, PERSISTENT_WORKER_FLAG],
                "environment": sorted(self.env),
                "protocol": self.protocol,
            },
            separators=(",", ":"),
        )
        object.__setattr__(self, "digest", hashlib.sha256(canonical.encode()).hexdigest())

    @property
    def short(self) -> str:
        """The digest's first 12 characters, for logs and ``status``."""
        return self.digest[:12]

    @property
    def family(self) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], str, bool, str]:
        """Everything but the tool digests: a new member of a family retires the old ones."""
        return (self.argv, self.env, self.protocol, self.multiplex, self.instance)


class ToolDigests:
    """SHA-256 of the tool input files, through the shared digest cache; a tool input
    that cannot be read is a RequestError that says how to fix it."""

    def __init__(self, paths: tuple[str, ...], cwd: str, cache: DigestCache) -> None:
        self.paths = paths
        self._cwd = cwd
        self._cache = cache

    def current(self) -> tuple[tuple[str, str], ...]:
        """Digests of every tool input as it is on disk now (reads the file system)."""
        return tuple((path, self._digest(path)) for path in self.paths)

    def known(self, digest_of: Callable[[str], str | None]) -> tuple[tuple[str, str], ...] | None:
        """What ``current`` would find, if ``digest_of`` (a tool input's digest found
        without waiting, or None) finds every tool input's; else None."""
        found = []
        for path in self.paths:
            digest = digest_of(path)
            if digest is None:
                return None
            found.append((path, digest))
        return tuple(found)

    def _digest(self, path: str) -> str:
        try:
            return self._cache.read(os.path.join(self._cwd, path))
        except OSError as exc:
            raise RequestError(
                f"tool input {path!r} cannot be read ({exc.strerror}); it was named with "
                "--tool-input or in the config's tool_inputs: build it or fix the path"
            ) from None
