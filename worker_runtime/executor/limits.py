"""Resource limits for each action and each persistent worker on the executor: memory,
CPU and process count (``--limit-memory``, ``--limit-cpus``, ``--limit-pids``).

Enforced by a control group of its own, made by the executor (as root) before the
process starts and joined by it before it runs anything of the tenant's (a ``/bin/sh``
that writes its own pid into the group, then execs the rest):

- **cgroup v2** where the machine has a v2 hierarchy with the controllers
  (``memory.max``, ``cpu.max``, ``pids.max``; an OOM kill counted in
  ``memory.events``);
- **cgroup v1** where the controllers are mounted one per hierarchy, as on this machine
  kind (``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes``,
  ``cpu.cfs_quota_us``, ``pids.max``; an OOM kill counted in ``memory.oom_control``);
- **rlimits** otherwise (``prlimit``: the address space for memory, the uid's process
  count for processes; no CPU rate), which bound each process rather than the group.

With tenants (``--uid-range``) every action and worker gets a group even when the
operator sets no limit: 1,024 processes, and 75% of the machine's memory (or of the
executor's own group's limit, if lower), the memory only where a group enforces it.

The group also finds every process an action left behind, wherever it went (a new
session, a new process group): all of them are killed when the action ends or its
worker stops. An OOM kill makes the action's status RESOURCE_EXHAUSTED, naming the
limit."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import re
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger(__name__)

#: Where the groups go under each hierarchy: ``worker-runtime/<bot id>/<name>``.
BASE = "worker-runtime"
#: Where each executor with groups holds a lock (a file named by its bot id) for as long
#: as it runs: a group set whose lock nobody holds belongs to no running executor.
LOCKS = Path("/run/worker-runtime/bots")
#: How long an executor waits for its own bot id's lock at its start.
OWN_LOCK_WAIT_S = 5.0
#: The process limit of each action and worker when the executor runs tenants and the
#: operator set none: far above what a compiler needs, far below what takes a machine.
DEFAULT_TENANT_PIDS = 1024
#: The share of the machine's memory each action and worker may use when the executor
#: runs tenants and the operator set none: one alone cannot take the machine (and the
#: executor with it), and no compiler is starved.
DEFAULT_TENANT_MEMORY_SHARE = 0.75
#: The CPU period the quota is a share of (microseconds).
CPU_PERIOD_US = 100_000
_V1_CONTROLLERS = ("memory", "cpu", "pids")
#: Run as root before the rest of the command: joins each group named before ``--``.
_JOIN_SCRIPT = (
    'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; done; '
    'shift; exec "$@"'
)


class LimitsError(RuntimeError):
    """The limits cannot be set up (a bad value, a group that cannot be made)."""


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.memory_mb, self.cpus, self.pids))

    @property
    def cpu_quota_us(self) -> int | None:
        """The CPU time per ``CPU_PERIOD_US`` (at least 1 ms), or None for no quota."""
        return None if self.cpus is None else max(1000, int(self.cpus * CPU_PERIOD_US))

    def problem(self) -> str | None:
        """What is wrong with these limits as options (a value that is not a finite
        number above 0, or limits without root), or None. The executor's command line
        and `cluster up` (before it stops any running executor) both ask."""
        for name, value in (("--limit-memory", self.memory_mb), ("--limit-cpus", self.cpus),
                            ("--limit-pids", self.pids)):  # fmt: skip
            if value is not None and not (math.isfinite(value) and value > 0):
                return f"{name} must be more than 0, not {value:g}"
        if self.any and os.geteuid() != 0:
            return "the --limit-* options need root (to make control groups)"
        return None

    def describe(self) -> str:
        parts = []
        if self.memory_mb is not None:
            parts.append(f"memory {self.memory_mb} MB")
        if self.cpus is not None:
            parts.append(f"{self.cpus:g} CPUs")
        if self.pids is not None:
            parts.append(f"{self.pids} processes")
        return ", ".join(parts) or "none"


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, type, options) of the cgroup file systems."""
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
                found.append((fields[1], fields[2], set(fields[3].split(","))))
    return found


def _hierarchies() -> tuple[Path | None, dict[str, Path]]:
    """The cgroup v2 mount that has the memory, cpu and pids controllers (or None), and
    the v1 mount of each of those controllers that has one."""
    v2: Path | None = None
    v1: dict[str, Path] = {}
    for mount, kind, options in _mounts():
        if kind == "cgroup2":
            try:
                controllers = (Path(mount) / "cgroup.controllers").read_text().split()
            except OSError:  # not one this process may read: as if it had none
                controllers = []
            if {"memory", "pids", "cpu"} <= set(controllers):
                v2 = Path(mount)
        else:
            for controller in _V1_CONTROLLERS:
                if controller in options:
                    v1[controller] = Path(mount)
    return v2, v1


def _mechanism(v2: Path | None, v1: dict[str, Path]) -> str:
    if v2 is not None:
        return "cgroup v2"
    return "cgroup v1" if set(v1) == set(_V1_CONTROLLERS) else "rlimits"


def _own_memory_limit(v2: Path | None, v1: dict[str, Path]) -> int | None:
    """The lowest memory limit, in bytes, on this process's own control group and those
    above it (a container's), or None if none is set or it cannot be read."""
    try:
        with open("/proc/self/cgroup") as groups:
            lines = [line.rstrip("\n").split(":", 2) for line in groups]
    except OSError:
        return None
    if v2 is not None:  # the v2 line has no controller names
        mount, name, found = v2, "memory.max", [p for _, c, p in lines if c == ""]
    elif "memory" in v1:
        mount, name = v1["memory"], "memory.limit_in_bytes"
        found = [p for _, c, p in lines if "memory" in c.split(",")]
    else:
        return None
    if not found:
        return None
    group = mount / found[0].lstrip("/")
    limits = []
    for level in [group, *group.parents]:
        if not level.is_relative_to(mount):
            break
        with contextlib.suppress(OSError, ValueError):
            limits.append(int((level / name).read_text().strip()))  # "max": no limit
    return min(limits) if limits else None


def default_tenant_memory_mb() -> int | None:
    """The memory limit of each action and worker with tenants when the operator set
    none: ``DEFAULT_TENANT_MEMORY_SHARE`` of the machine's (or of the executor's own
    group's limit, in a container, if lower), where a control group enforces it. None
    where only rlimits would: ``RLIMIT_AS`` bounds the address space, which GHC's and the
    JVM's reservations pass without using the memory; and None if the machine's memory
    cannot be read."""
    v2, v1 = _hierarchies()
    if _mechanism(v2, v1) == "rlimits":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            total = next(
                int(line.split()[1]) << 10 for line in meminfo if line.startswith("MemTotal:")
            )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    own = _own_memory_limit(v2, v1)
    available = min(total, own) if own is not None else total
    return int(available * DEFAULT_TENANT_MEMORY_SHARE) >> 20


class Group:
    """One action's or worker's control group (one directory per hierarchy), or, under
    rlimits, none: only the command that sets them."""

    def __init__(self, directories: list[Path], join: list[str], oom_file: Path | None):
        self.directories = directories
        self._join = join
        self._oom_file = oom_file
        self._oom_before = self._oom_count()

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the group (or under the rlimits)."""
        return [*self._join, *argv]

    def _oom_count(self) -> int:
        if self._oom_file is None:
            return 0
        try:
            match = re.search(r"^oom_kill (\d+)$", self._oom_file.read_text(), re.M)
        except OSError:
            return 0
        return int(match.group(1)) if match else 0

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the group for passing its memory."""
        return self._oom_count() > self._oom_before

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.directories:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        return found

    def remove(self) -> None:
        """Kills whatever still runs in the group and removes it. What is left is most
        often a sandbox's PID namespace still being torn down after its command ended: a
        millisecond's wait, so the waits start short (0.5 ms, doubling to 10 ms; 0.5 s
        in all). A group that cannot be removed (a process stuck in the kernel outlives
        SIGKILL) is logged, with what still runs in it; the executor's stop, or its
        next start (``Confinement.start``: the same bot id, or a default one naming a
        pid of this host that is gone), removes it."""
        pause, waited = 0.0005, 0.0
        left = self.pids()
        while left and waited < 0.5:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(pause)
            waited += pause
            pause = min(pause * 2, 0.01)
            left = self.pids()
        for directory in self.directories:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                still = f"; still in it: {sorted(left)}" if left else ""
                LOGGER.warning(
                    "control group %s was not removed (%s)%s",
                    directory,
                    os.strerror(exc.errno or errno.EIO),
                    still,
                )


def _safe_name(bot_id: str) -> str:
    """A bot id as a directory and file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", bot_id)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Confinement:
    """Makes the groups of one executor, with one set of limits, by the mechanism the
    machine has (``kind``: "cgroup v2", "cgroup v1" or "rlimits")."""

    def __init__(
        self, limits: Limits, bot_id: str, rlimits_only: bool = False, locks: Path = LOCKS
    ) -> None:
        """``rlimits_only``: the fallback even where there are cgroups (for its tests).
        ``locks``: where the executors' locks are (LOCKS but in tests)."""
        self.limits = limits
        self._name = _safe_name(bot_id)
        v2, v1 = (None, {}) if rlimits_only else _hierarchies()
        self.kind = _mechanism(v2, v1)
        self._v2 = v2 / BASE / self._name if v2 is not None else None
        self._v1 = {controller: mount / BASE / self._name for controller, mount in v1.items()}
        #: ``worker-runtime`` under each hierarchy, holding every executor's groups.
        self._bases = {root.parent for root in (self._v2, *self._v1.values()) if root is not None}
        self._locks = locks
        self._lock: int | None = None
        self._serial = 0

    def describe(self) -> str:
        what = {"rlimits": "rlimits (no CPU rate; per process)"}.get(self.kind, self.kind)
        return f"{self.limits.describe()} per action and worker, by {what}"

    def start(self) -> None:
        """At the executor's start: takes its bot id's lock (held until it exits) and
        removes the groups, and what still runs in them, that killed predecessors left:
        those of its own bot id, and those of an executor of this host with a default
        bot id (``<hostname>-<pid>``, a new one at every start) whose process is gone and
        whose lock nobody holds."""
        if not self._bases:
            return
        # A predecessor with this bot id may still be letting go of it as it exits.
        self._lock = self._take_lock(self._name, wait_s=OWN_LOCK_WAIT_S)
        if self._lock is None:
            LOGGER.warning(
                "another executor holds the lock of bot id %s (%s): two executors with one "
                "bot id remove each other's control groups; give each its own --bot-id",
                self._name,
                self._locks,
            )
        self.clear()
        prefix = f"{_safe_name(socket.gethostname())}-"
        names = {d.name for base in self._bases if base.is_dir() for d in base.iterdir()}
        for name in sorted(names - {self._name}):
            pid = name.removeprefix(prefix)
            if not name.startswith(prefix) or not pid.isdigit() or _alive(int(pid)):
                continue
            lock = self._take_lock(name)
            if lock is None:  # an executor runs with that bot id: its groups stay
                continue
            try:
                LOGGER.info(
                    "removing the control groups of executor %s (its process is gone)", name
                )
                self._clear(name)
            finally:
                self._let_go(name, lock)

    def release(self) -> None:
        """Lets go of the bot id's lock (at the executor's end, its groups cleared)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            self._let_go(self._name, lock)

    def _let_go(self, name: str, lock: int) -> None:
        """Removes bot id ``name``'s lock file, then lets go of it (a default bot id is
        new at every start: kept, they would pile up). One that another process opened
        meanwhile locks the removed file, and only a cleanup is decided by it."""
        with contextlib.suppress(OSError):
            (self._locks / f"{name}.lock").unlink()
        os.close(lock)

    def _take_lock(self, name: str, wait_s: float = 0.0) -> int | None:
        """The lock of bot id ``name``, taken (an open file, locked while it stays open);
        None if another process holds it for ``wait_s`` or it cannot be made. Root's
        alone (0600 in a 0700 directory): no other user may hold one to keep a dead
        executor's groups (and what runs in them) from being removed. One its last
        holder removed as it was taken locks nothing: taken again at its name."""
        path = self._locks / f"{name}.lock"
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._locks.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(self._locks, 0o700)  # made otherwise before: root's alone now
                lock = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                LOGGER.warning(
                    "cannot make the executor lock %s (%s)",
                    path,
                    os.strerror(exc.errno or errno.EIO),
                )
                return None
            try:
                os.fchmod(lock, 0o600)  # one an older executor made, readable by all
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(lock)
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.05)
                continue
            try:
                held, named = os.fstat(lock), os.stat(path)
                if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                    return lock
            except FileNotFoundError:
                pass
            os.close(lock)

    def clear(self) -> None:
        """Removes this bot's groups, and what still runs in them: at the start, those a
        killed predecessor with the same bot id left; at the end, its own."""
        self._clear(self._name)

    def _clear(self, name: str) -> None:
        """Removes bot id ``name``'s groups, and what still runs in them."""
        for base in self._bases:
            root = base / name
            if not root.is_dir():
                continue
            for directory in sorted(root.iterdir(), reverse=True):
                if directory.is_dir():
                    Group([directory], [], None).remove()
            with contextlib.suppress(OSError):
                root.rmdir()

    def group(self, name: str) -> Group:
        """A new group for one action or worker, its limits written."""
        self._serial += 1
        leaf = f"{name}-{self._serial}"
        if self.kind == "rlimits":
            return Group([], self._rlimit_command(), None)
        try:
            if self._v2 is not None:
                return self._make_v2(self._v2 / leaf)
            return self._make_v1(leaf)
        except OSError as exc:
            raise LimitsError(
                f"cannot make the control group {leaf} ({exc.strerror}); run the executor "
                "as root, or without the --limit-* options"
            ) from None

    def _join(self, directories: list[Path]) -> list[str]:
        return ["/bin/sh", "-c", _JOIN_SCRIPT, "sh", *map(str, directories), "--"]

    def _make_v2(self, directory: Path) -> Group:
        # Each level from the mount down hands the controllers to the one below it.
        assert self._v2 is not None
        directory.mkdir(parents=True, exist_ok=True)
        for level in [*reversed(directory.parents), directory][:-1]:
            if (level / "cgroup.subtree_control").exists():
                with contextlib.suppress(OSError):
                    (level / "cgroup.subtree_control").write_text("+memory +cpu +pids")
        limits = self.limits
        if limits.memory_mb is not None:
            (directory / "memory.max").write_text(str(limits.memory_mb << 20))
            with contextlib.suppress(OSError):
                (directory / "memory.swap.max").write_text("0")
        if limits.cpu_quota_us is not None:
            (directory / "cpu.max").write_text(f"{limits.cpu_quota_us} {CPU_PERIOD_US}")
        if limits.pids is not None:
            (directory / "pids.max").write_text(str(limits.pids))
        return Group([directory], self._join([directory]), directory / "memory.events")

    def _make_v1(self, leaf: str) -> Group:
        limits = self.limits
        directories = {c: root / leaf for c, root in self._v1.items()}
        for directory in directories.values():
            directory.mkdir(parents=True, exist_ok=True)
        memory = directories["memory"]
        if limits.memory_mb is not None:
            (memory / "memory.limit_in_bytes").write_text(str(limits.memory_mb << 20))
            with contextlib.suppress(OSError):  # no swap accounting: memory alone
                (memory / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_mb << 20))
        if limits.cpu_quota_us is not None:
            (directories["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (directories["cpu"] / "cpu.cfs_quota_us").write_text(str(limits.cpu_quota_us))
        if limits.pids is not None:
            (directories["pids"] / "pids.max").write_text(str(limits.pids))
        ordered = [directories[c] for c in _V1_CONTROLLERS]
        return Group(ordered, self._join(ordered), memory / "memory.oom_control")

    def _rlimit_command(self) -> list[str]:
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            raise LimitsError("no cgroups and no prlimit (util-linux) to set rlimits with")
        command = [prlimit]
        if self.limits.memory_mb is not None:
            command.append(f"--as={self.limits.memory_mb << 20}")
        if self.limits.pids is not None:
            command.append(f"--nproc={self.limits.pids}")
        return [*command, "--"]
