"""Who a tenant's actions and workers run as on the executor.

Multi-tenant (``--uid-range START-END``, as root): each tenant (REAPI instance) runs
under a uid of its own from the operator's range, with the gid of the same number and
no supplementary groups. A tenant gets the lowest free uid the first time it is seen,
and keeps it: the assignment is kept in a map file (``--uid-map``), shared under a lock
by every executor of the machine that uses the range, so that two executors never give
one uid to two tenants, and a tenant's files from before a restart are still its own.
Single-tenant (no range, not root): the executor's own user runs everything, and leases
of any other instance are refused. Root without a range is refused: no action or worker
ever runs as root.

Also here, the checks and the layout that keep tenants apart on disk: the work
directory's subdirectories and their modes, the hand-over of a directory to its tenant,
and the refusal of a bearer token the tenants could read.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from worker_runtime.atomic_files import write_atomically


class TenantError(RuntimeError):
    """The executor cannot run a tenant (no uid left, not privileged, not its tenant)."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """The uid and gid a tenant's processes get (None: the executor's own)."""

    uid: int | None = None
    gid: int | None = None

    @property
    def switches(self) -> bool:
        return self.uid is not None

    @property
    def ids(self) -> tuple[int, int] | None:
        """(uid, gid) to switch to, or None."""
        if self.uid is None or self.gid is None:
            return None
        return self.uid, self.gid


def parse_uid_range(text: str) -> range:
    """``START-END`` (both included) as a range; a ValueError says what is wrong."""
    start_text, dash, end_text = text.partition("-")
    if not dash or not start_text.isdigit() or not end_text.isdigit():
        raise ValueError(f"--uid-range must be START-END (e.g. 200000-200999), not {text!r}")
    start, end = int(start_text), int(end_text)
    if start < 1000 or end < start or end >= 1 << 31:
        raise ValueError(
            f"--uid-range {text}: START must be at least 1000 (never a system account or "
            "root) and END at least START, below 2^31"
        )
    return range(start, end + 1)


def privilege_problem(uid_range: range | None, euid: int | None = None) -> str | None:
    """Why the executor must not start in this mode, or None."""
    euid = os.geteuid() if euid is None else euid
    if uid_range is not None and euid != 0:
        return (
            "--uid-range runs each tenant under its own uid, which needs root (to switch "
            "uids and to hand each tenant its directories); start the executor as root, or "
            "without --uid-range to run a single tenant as your own user"
        )
    if uid_range is None and euid == 0:
        return (
            "the executor runs as root but no action or worker may: give --uid-range "
            "START-END (e.g. 200000-200999) to run each tenant under its own uid from that "
            "range, or start the executor as an unprivileged user to run a single tenant"
        )
    return None


class Tenants:
    """Maps each instance to what its processes run as, stable across restarts."""

    def __init__(self, uid_range: range | None, uid_map: Path, own_instance: str) -> None:
        self.uid_range = uid_range
        self.own_instance = own_instance
        self._map_path = uid_map
        self._lock = threading.Lock()
        self._uids: dict[str, int] = {}

    @property
    def multi(self) -> bool:
        return self.uid_range is not None

    def run_as(self, instance: str) -> RunAs:
        """The uid and gid of ``instance``'s processes; TenantError if it cannot be run."""
        if self.uid_range is None:
            if instance != self.own_instance:
                raise TenantError(
                    f"this executor runs only instance {self.own_instance!r} (single-tenant, "
                    f"unprivileged) and was leased an action of {instance!r}; run it as root "
                    "with --uid-range to serve several tenants"
                )
            return RunAs()
        with self._lock:
            uid = self._uids.get(instance)
            if uid is None:
                uid = self._assign(instance)
                self._uids[instance] = uid
        return RunAs(uid, uid)

    def _assign(self, instance: str) -> int:
        """The tenant's uid from the shared map, given the lowest free one if it has none,
        under the map's lock (other executors of the machine assign from the same map)."""
        assert self.uid_range is not None
        self._map_path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self._map_path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            uids = self._load()
            uid = uids.get(instance)
            if uid is None:
                taken = set(uids.values())
                uid = next((u for u in self.uid_range if u not in taken), None)
                if uid is None:
                    raise TenantError(
                        f"no uid left for tenant {instance!r}: all {len(self.uid_range)} of "
                        f"--uid-range {self.uid_range.start}-{self.uid_range.stop - 1} are "
                        f"taken in {self._map_path}; widen the range"
                    )
                uids[instance] = uid
                self._save(uids)
            return uid
        finally:
            os.close(lock_fd)

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self._map_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise TenantError(
                f"cannot read the tenants' uids from {self._map_path}: {exc}"
            ) from None
        assert self.uid_range is not None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v in self.uid_range
            for k, v in data.items()
        ):
            raise TenantError(
                f"{self._map_path} does not map tenants to uids of --uid-range "
                f"{self.uid_range.start}-{self.uid_range.stop - 1}; remove it only if none "
                "of those tenants' files are kept"
            )
        return dict(data)

    def _save(self, uids: dict[str, int]) -> None:
        write_atomically(self._map_path, json.dumps(uids, indent=1, sort_keys=True).encode(), 0o600)


def unreachable_ancestor(path: Path) -> Path | None:
    """The first directory above ``path`` (itself included) that other users cannot
    pass through (no o+x), or None: tenants' uids must reach their directories below."""
    at = path.resolve()
    for directory in [*reversed(at.parents), at]:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return directory
    return None


def readable_secret(path: str, uid_range: range) -> str | None:
    """Why the tenants could read a secret of the executor's (its bearer token): a file
    others may read, one a tenant's uid owns, or one whose group may and is a tenant's;
    None if they cannot (ACLs aside). The sandbox shows `/etc` read-only, so a token kept
    there is no safer."""
    try:
        status = os.stat(path)
    except OSError as exc:
        return f"--credentials-file {path}: {exc.strerror}"
    by_group = status.st_mode & stat.S_IRGRP and status.st_gid in uid_range
    if status.st_mode & stat.S_IROTH or by_group or status.st_uid in uid_range:
        return (
            f"--credentials-file {path} is {stat.filemode(status.st_mode)}, owner "
            f"{status.st_uid}, group {status.st_gid}: the tenants' actions could read the "
            f"executor's token; make it root's and chmod 600 {path}"
        )
    return None


#: Whether a user may hard-link a file it does not own (0: it may).
PROTECTED_HARDLINKS = "/proc/sys/fs/protected_hardlinks"


def unprotected_hardlinks(setting: str = PROTECTED_HARDLINKS) -> str | None:
    """Why tenants run without the sandbox could read the executor's files: with
    ``fs.protected_hardlinks`` off, an action hard-links one (its uid map, a token on the
    same file system) among its outputs, and the executor, root, uploads it. None when
    the kernel refuses such links (Debian's default), or says nothing of them."""
    try:
        value = Path(setting).read_text().strip()
    except OSError:
        return None
    if value != "0":
        return None
    return (
        "fs.protected_hardlinks is 0: a tenant's action could hard-link the executor's own "
        "files among its outputs, which the executor reads as root; run the tenants in the "
        "sandbox (drop --no-sandbox), or `sysctl fs.protected_hardlinks=1`"
    )


#: The work directory's subdirectories the tenants pass through (0711 with tenants), and
#: the executor's own (0700): its local CAS copy, discarded workers, the workers' logs.
SHARED_DIRECTORIES = ("actions", "workers")
PRIVATE_DIRECTORIES = ("blobs", "discarded", "worker-logs")


def prepare_workdir(workdir: Path, multi: bool) -> None:
    """Makes the executor's work directory: with tenants, 0711 down to the tenants' own
    directories (they pass through, list nothing), the executor's local CAS copy 0700.
    A TenantError if a directory above it shuts the tenants out."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not multi:
        return
    blocked = unreachable_ancestor(workdir)
    if blocked is not None:
        raise TenantError(
            f"the tenants' uids cannot reach the work directory {workdir}: {blocked} is "
            f"{stat.filemode(os.stat(blocked).st_mode)} (no x for others); give --workdir "
            "a place under directories others may pass through, or chmod o+x it"
        )
    os.chmod(workdir, 0o711)
    for shared in SHARED_DIRECTORIES:
        (workdir / shared).mkdir(mode=0o711, exist_ok=True)
        os.chmod(workdir / shared, 0o711)
    for private in PRIVATE_DIRECTORIES:
        (workdir / private).mkdir(mode=0o700, exist_ok=True)
        os.chmod(workdir / private, 0o700)


def hand_over(directory: Path, run_as: RunAs) -> None:
    """Makes ``directory`` and every directory below it the tenant's and private (0700):
    it can create its outputs there and nobody else can look in. Files stay as written
    (readable; the executor's own, so that the tenant cannot change cached inputs).

    ``directory`` must be the executor's, in a directory of the executor's, with nothing
    of the tenant's running in it yet. The walk goes bottom-up, so that each directory
    changes hands while its parent is still the executor's: a tenant's process cannot
    swap it for a symlink and have root change the owner of something else."""
    ids = run_as.ids
    if ids is None:
        return
    directory.chmod(0o700)  # no one passes through while it is handed over
    for at, _dirs, _files in os.walk(directory, topdown=False):
        os.chmod(at, 0o700)
        os.chown(at, *ids, follow_symlinks=False)
