"""How the executor starts a tenant's process (a one-shot action or a persistent
worker): the command, from the outside in, joins its control group (as root), enters its
sandbox, and drops to the tenant's uid; or, with neither, Popen switches the uid itself
(in the child, between fork and exec: nothing more to run)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from worker_runtime.executor.limits import Group
from worker_runtime.executor.sandbox import Sandbox, dropped_to
from worker_runtime.executor.tenants import RunAs


@dataclass(frozen=True, slots=True)
class Launch:
    #: The whole command.
    argv: list[str]
    #: Who Popen runs it as (empty: the executor's own, the command switches inside).
    run_as: RunAs


def launch(
    argv: Sequence[str],
    *,
    run_as: RunAs,
    sandbox: Sandbox | None,
    group: Group | None,
    writable: Sequence[str],
    cwd: str,
    network: bool,
    fixed: Sequence[str] = (),
) -> Launch:
    """``fixed``: paths in ``writable`` the sandbox shows read-only. Without the sandbox
    nothing mounts them: they stay root's files the tenant may read and not change, but
    may rename or remove (their directories are its own)."""
    inner, popen_as = list(argv), run_as
    if sandbox is not None:
        inner = sandbox.command(
            argv, run_as=run_as, writable=writable, cwd=cwd, network=network, fixed=fixed
        )
        popen_as = RunAs()
    elif group is not None and run_as.switches:  # the group is joined as root, then this
        setpriv, env = shutil.which("setpriv"), shutil.which("env")
        if setpriv is None or env is None:
            raise RuntimeError("setpriv and env are needed to switch uids after a cgroup")
        # env looks the program up on PATH as the tenant: setpriv would as root (it still
        # holds root's capabilities when it looks), and find what the tenant cannot run.
        inner = [*dropped_to(setpriv, run_as), env, "--", *argv]
        popen_as = RunAs()
    if group is not None:
        inner = group.command(inner)
    return Launch(inner, popen_as)
