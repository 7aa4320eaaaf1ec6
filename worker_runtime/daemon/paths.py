"""Where a daemon lives: its private directory, and the socket, lock and state files of the
daemon for one (user, project root, runtime version).

The directory is ``$WORKER_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/buck2-worker-runtime``,
else ``/tmp/buck2-worker-runtime-<uid>``; it is created 0700 and refused if another user
owns it or others may enter it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from worker_runtime import __version__
from worker_runtime.errors import ConfigError

# The interpreter's own SHA-256 where it has one: hashlib loads OpenSSL first, which costs
# a front's start about 2.5 ms (and the digests here are only names and stamps).
try:
    from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment,no-redef,unused-ignore]


def code_stamp(package: Path | None = None) -> str:
    """A short digest of the package's source files (names, sizes, mtimes): an edited
    checkout (an editable install) is a different version from the daemon's point of view.
    Bytecode caches are not sources: compiling them changes nothing."""
    package = package or Path(__file__).resolve().parent.parent
    sources = []
    for directory, subdirs, files in os.walk(package):
        subdirs[:] = [name for name in subdirs if name != "__pycache__"]
        sources += [f"{directory}/{name}" for name in files if name.endswith(".py")]
    hasher = sha256()
    for source in sorted(sources):
        info = os.stat(source)
        hasher.update(f"{source}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return hasher.hexdigest()[:8]


def runtime_version() -> str:
    """The version a daemon must match: the release and a stamp of the code.
    ``WORKER_RUNTIME_DAEMON_VERSION`` overrides it (tests)."""
    return os.environ.get("WORKER_RUNTIME_DAEMON_VERSION") or f"{__version__}+{code_stamp()}"


def runtime_dir() -> Path:
    if os.environ.get("WORKER_RUNTIME_DIR"):
        return Path(os.environ["WORKER_RUNTIME_DIR"])
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "buck2-worker-runtime"
    return Path(f"/tmp/buck2-worker-runtime-{os.getuid()}")


def private_dir(path: Path) -> Path:
    """Creates ``path`` 0700 if needed; fails if it is not ours alone."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"daemon directory {path} cannot be created: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(
            f"daemon directory {path} is not a directory owned by uid {os.getuid()}; "
            "remove it or set WORKER_RUNTIME_DIR to a private directory"
        )
    if info.st_mode & 0o077:
        raise ConfigError(
            f"daemon directory {path} is open to other users (mode {info.st_mode & 0o777:o}); "
            f"run `chmod 700 {path}` or set WORKER_RUNTIME_DIR to a private directory"
        )
    return path


class DaemonPaths:
    """The files of the daemon for one (user, project root, version). A plain class, not
    a dataclass: every worker front imports this, and `dataclasses` alone costs a start
    about 7 ms."""

    __slots__ = ("directory", "project_root", "version")

    def __init__(self, directory: Path, project_root: str, version: str) -> None:
        self.directory = directory
        self.project_root = project_root
        self.version = version

    def __repr__(self) -> str:
        return f"DaemonPaths({self.directory!r}, {self.project_root!r}, {self.version!r})"

    @classmethod
    def for_project(cls, project_root: str, version: str | None = None) -> DaemonPaths:
        return cls(runtime_dir(), os.path.realpath(project_root), version or runtime_version())

    @property
    def daemon_id(self) -> str:
        digest = sha256(f"{self.project_root}\0{self.version}".encode()).hexdigest()
        return digest[:16]

    @property
    def socket(self) -> Path:
        return self.directory / f"{self.daemon_id}.sock"

    @property
    def lock(self) -> Path:
        return self.directory / f"{self.daemon_id}.lock"

    @property
    def state(self) -> Path:
        return self.directory / f"{self.daemon_id}.json"

    @property
    def spawn_log(self) -> Path:
        """The daemon's own stdout/stderr before its logging starts."""
        return self.directory / f"{self.daemon_id}.out"
