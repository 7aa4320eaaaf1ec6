"""The view an action or a persistent worker gets on the executor (``--sandbox``).

Each runs in namespaces of its own, made by bubblewrap (started by the executor, as
root): a mount namespace in which it sees the system directories read-only (``/usr``,
``/etc``, ``/opt``, the merged-usr links, and toolchain data kept elsewhere: Debian's
GHC package database), the operator's ``--sandbox-read-only`` paths, a private ``/tmp``
(1777), a fresh ``/proc`` and ``/dev``, and, writable, only its own directories (an
action: its action directory; a persistent worker: its home, whose tool files are
mounted again read-only, and the executor's ``actions/``, where each request's
directory, its tenant's and 0700, appears); a PID
namespace (no other process is visible); IPC and UTS namespaces; and a network
namespace with nothing in it unless the action's platform sets ``network`` to ``on``.
Inside, ``setpriv`` drops to the tenant's uid, with no supplementary groups, no
capabilities and ``no_new_privs`` (a setuid binary gains nothing).

A persistent worker gets its view once, when it starts: every request of its key runs in
the same one, and pays nothing for it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from worker_runtime.executor.tenants import RunAs

#: The platform property that gives an action (or its worker) the host's network.
NETWORK_PROPERTY = "network"
#: Seen read-only when present.
SYSTEM_DIRECTORIES = ("/usr", "/etc", "/opt")
#: Links to /usr on a merged-usr system, directories on an older one.
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
#: Toolchain data a distribution keeps outside /usr, seen read-only when present: Debian's
#: GHC links /usr/lib/ghc/package.conf.d to its package database here.
TOOLCHAIN_DATA = ("/var/lib/ghc",)


class SandboxError(RuntimeError):
    """The sandbox cannot be used here (no bubblewrap, no setpriv)."""


def wants_network(properties: dict[str, str]) -> bool:
    return properties.get(NETWORK_PROPERTY, "").lower() == "on"


@dataclass(frozen=True, slots=True)
class Sandbox:
    bwrap: str
    setpriv: str
    #: The extra read-only paths: ``TOOLCHAIN_DATA`` present here, and the operator's
    #: (toolchains outside /usr and /opt).
    read_only: tuple[str, ...] = ()

    @classmethod
    def find(cls, read_only: Sequence[str] = ()) -> Sandbox:
        """The sandbox with this machine's bubblewrap and setpriv; SandboxError saying
        what to install if one is missing, or which path is not there."""
        bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
        if bwrap is None or setpriv is None:
            missing = " and ".join(
                f"{name} ({package})"
                for name, package, found in (
                    ("bwrap", "Debian package bubblewrap", bwrap),
                    ("setpriv", "util-linux", setpriv),
                )
                if found is None
            )
            raise SandboxError(f"the sandbox needs {missing}: install it, or give --no-sandbox")
        for path in read_only:
            if not os.path.isabs(path) or not os.path.exists(path):
                raise SandboxError(f"--sandbox-read-only {path}: not an existing absolute path")
        present = [path for path in TOOLCHAIN_DATA if os.path.isdir(path)]
        return cls(bwrap, setpriv, tuple(dict.fromkeys([*present, *read_only])))

    def command(
        self,
        argv: Sequence[str],
        *,
        run_as: RunAs,
        writable: Sequence[str],
        cwd: str,
        network: bool,
        fixed: Sequence[str] = (),
    ) -> list[str]:
        """``argv`` run in its own namespaces, seeing ``writable`` read-write and the
        system read-only, as ``run_as``, from ``cwd``. ``fixed``: paths inside the
        writable ones mounted again read-only (a worker's tool files in its home), which
        it can then neither change, rename nor remove."""
        command = [
            self.bwrap, "--die-with-parent", "--new-session",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        ]  # fmt: skip
        if not network:
            command.append("--unshare-net")
        for directory in SYSTEM_DIRECTORIES:
            if os.path.isdir(directory):
                command += ["--ro-bind", directory, directory]
        for link in SYSTEM_LINKS:
            if os.path.islink(link):
                command += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                command += ["--ro-bind", link, link]
        command += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
        # The directories above each bound path, which bubblewrap would make 0700 (and
        # shut the tenant out): 0711, so that it passes through and lists nothing.
        bound = (*SYSTEM_DIRECTORIES, *self.read_only)
        made: set[str] = set()
        for path in (*self.read_only, *writable):
            for above in reversed(Path(path).parents[:-1]):  # not "/"
                name = str(above)
                covered = any(name == b or name.startswith(b.rstrip("/") + "/") for b in bound)
                if name not in made and not covered:
                    command += ["--perms", "0711", "--dir", name]
                    made.add(name)
        for path in self.read_only:
            command += ["--ro-bind", path, path]
        for path in writable:
            command += ["--bind", path, path]
        for path in fixed:
            command += ["--ro-bind", path, path]
        command += ["--chdir", cwd, "--"]
        return [*command, *dropped_to(self.setpriv, run_as), *argv]


def dropped_to(setpriv: str, run_as: RunAs) -> list[str]:
    """The prefix that runs a command as ``run_as`` (from root): its uid and gid, no
    supplementary groups, no capabilities, no_new_privs, and killed when its parent (the
    executor's thread that started it) ends; empty if it switches nothing. The kernel
    clears a death signal set before a uid change: it is set here, after it, or a
    tenant's process outlived an executor killed with SIGKILL."""
    ids = run_as.ids
    if ids is None:
        return []
    return [
        setpriv, f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--pdeathsig=KILL", "--",
    ]  # fmt: skip
