"""Where a daemon lives: its private directory, and the socket, lock and state files of the
daemon for one (user, project root, runtime version).

The directory is ``$WORKER_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/buck2-worker-runtime``,
else ``/tmp/buck2-worker-runtime-<uid>``; it is created 0700 and refused if another user
owns it or others may enter it.

A worker front finds its daemon's socket here at the start of every Buck2 command, so
this module keeps its paths as strings and imports ``pathlib`` (about 3.5 ms of a start)
only when a ``Path`` is asked for.
"""

from __future__ import annotations

import os
import stat

from worker_runtime import __version__
from worker_runtime.errors import ConfigError

#: mypy takes it as true; neither typing nor pathlib is imported for it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

# The interpreter's own SHA-256 where it has one: hashlib loads OpenSSL first, which costs
# a front's start about 2.5 ms (and the digests here are only names and stamps).
try:
    from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment,no-redef,unused-ignore]


def _as_path(name: str) -> Path:
    from pathlib import Path

    return Path(name)


def code_stamp(package: str | os.PathLike[str] | None = None) -> str:
    """A short digest of the package's source files (names, sizes, mtimes): an edited
    checkout (an editable install) is a different version from the daemon's point of view.
    Bytecode caches are not sources: compiling them changes nothing."""
    if package is None:
        package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
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


def runtime_dir_name() -> str:
    """Where the daemons' files are (see the module's docstring). A relative
    WORKER_RUNTIME_DIR is taken from the working directory (the daemon, which starts
    elsewhere, gets it absolute); a relative XDG_RUNTIME_DIR is ignored, as the XDG
    specification says."""
    if os.environ.get("WORKER_RUNTIME_DIR"):
        return os.path.abspath(os.environ["WORKER_RUNTIME_DIR"])
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return os.path.join(xdg, "buck2-worker-runtime")
    return f"/tmp/buck2-worker-runtime-{os.getuid()}"


def private_dir(path: str | os.PathLike[str]) -> None:
    """Creates ``path`` 0700 if needed; fails if it is not ours alone."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
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


def other_versions(paths: DaemonPaths) -> list[dict[str, object]]:
    """The state files of this project's daemons of other runtime versions (each its pid,
    version and control socket), as they wrote them; unreadable ones left out."""
    import json

    try:
        names = sorted(os.listdir(paths.directory_name))
    except OSError:  # no daemon ever ran here
        return []
    found = []
    for name in names:
        path = os.path.join(paths.directory_name, name)
        if not name.endswith(".json") or path == paths.state_name:
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            continue
        if (
            isinstance(state, dict)
            and state.get("project_root") == paths.project_root
            and state.get("version") != paths.version
        ):
            found.append(state)
    return found


class DaemonPaths:
    """The files of the daemon for one (user, project root, version). A plain class, not
    a dataclass: every worker front imports this, and `dataclasses` alone costs a start
    about 7 ms."""

    __slots__ = ("directory_name", "project_root", "version")

    def __init__(self, directory: str | os.PathLike[str], project_root: str, version: str) -> None:
        self.directory_name = os.fspath(directory)
        self.project_root = project_root
        self.version = version

    def __repr__(self) -> str:
        return f"DaemonPaths({self.directory_name!r}, {self.project_root!r}, {self.version!r})"

    @classmethod
    def for_project(cls, project_root: str, version: str | None = None) -> DaemonPaths:
        return cls(runtime_dir_name(), os.path.realpath(project_root), version or runtime_version())

    @property
    def daemon_id(self) -> str:
        digest = sha256(f"{self.project_root}\0{self.version}".encode()).hexdigest()
        return digest[:16]

    def _file(self, suffix: str) -> str:
        return os.path.join(self.directory_name, f"{self.daemon_id}{suffix}")

    @property
    def directory(self) -> Path:
        return _as_path(self.directory_name)

    @property
    def socket_name(self) -> str:
        """The daemon's control socket, as the front connects to it (no Path needed)."""
        return self._file(".sock")

    @property
    def socket(self) -> Path:
        return _as_path(self.socket_name)

    @property
    def lock(self) -> Path:
        return _as_path(self.lock_name)

    @property
    def lock_name(self) -> str:
        return self._file(".lock")

    @property
    def state(self) -> Path:
        return _as_path(self.state_name)

    @property
    def state_name(self) -> str:
        return self._file(".json")

    @property
    def spawn_log_name(self) -> str:
        """The daemon's own stdout/stderr before its logging starts."""
        return self._file(".out")

    @property
    def spawn_log(self) -> Path:
        return _as_path(self.spawn_log_name)
