"""How the executor starts a tenant's process (a one-shot action or a persistent
worker): the command, from the outside in, joins its control group (as root), enters its
sandbox, and drops to the tenant's uid; or, with neither, Popen switches the uid itself
(in the child, between fork and exec: nothing more to run).

The tenant's environment reaches only the tenant's own program. Everything in front of
it runs as root (the group's join, bubblewrap, setpriv) and gets the executor's PATH and
nothing else: the dynamic loader of a root process honours ``LD_PRELOAD``,
``LD_LIBRARY_PATH`` or ``LD_AUDIT`` naming a library in the tenant's own directory, and
would run the tenant's code as root. The tenant's variables are set by ``env -i`` last,
already as the tenant."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker_runtime.executor.limits import Group
from worker_runtime.executor.sandbox import Sandbox, dropped_to
from worker_runtime.executor.tenants import RunAs
from worker_runtime.spawn import SETPRIV


@dataclass(frozen=True, slots=True)
class Launch:
    #: The whole command.
    argv: list[str]
    #: Who Popen runs it as (empty: the executor's own, the command switches inside).
    run_as: RunAs
    #: The environment Popen gives it: the tenant's when nothing runs in front of the
    #: tenant's program, else the executor's PATH alone (the command sets the tenant's).
    env: dict[str, str] = field(default_factory=dict)
    #: Where in ``argv`` the tenant's own part (``env -i ...``) begins, after the
    #: executor's wrappers; None when there is none (Popen starts the program itself).
    tenant_at: int | None = None

    def marked(self) -> list[str]:
        """``argv`` that, once every wrapper in front has done its part and just before
        the tenant's program, writes one byte to its stdin (Popen gives it a pipe's write
        end there) and gives the program /dev/null for stdin instead: no byte in the pipe
        once the process ended means a wrapper failed (a group it could not join, a
        sandbox it could not set up, a uid switch refused), and the exit status is the
        wrapper's, not the action's. Without wrappers, ``argv`` as it is."""
        if self.tenant_at is None:
            return list(self.argv)
        at = self.tenant_at
        return [*self.argv[:at], "/bin/sh", "-c", _MARK, "sh", *self.argv[at:]]


#: Run as the tenant, last before its program: one byte to stdin, then the program with
#: /dev/null for stdin (it never holds the pipe).
_MARK = 'printf x >&0; exec "$@" </dev/null'


#: coreutils' env, found once: it sets the tenant's variables, last.
ENV = shutil.which("env")


def _launcher_env() -> dict[str, str]:
    """The environment of what runs in front of a tenant's program, as root."""
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}


def _in_environment(env: Mapping[str, str], argv: Sequence[str], program: str) -> list[str]:
    """``argv`` (or, when empty, a program ``program`` appended later) run with exactly
    ``env``: ``env -i -- NAME=VALUE... ARGV``. env takes a first word holding ``=`` for
    one more variable, so such a program goes through ``sh -c 'exec "$@"'``."""
    if ENV is None:
        raise RuntimeError("env (coreutils) is needed to start a tenant's process")
    command = [ENV, "-i", "--", *(f"{name}={value}" for name, value in env.items())]
    if "=" in (argv[0] if argv else program):
        command += ["/bin/sh", "-c", 'exec "$@"', "sh"]
    return [*command, *argv]


def launch(
    argv: Sequence[str],
    *,
    run_as: RunAs,
    sandbox: Sandbox | None,
    group: Group | None,
    writable: Sequence[str],
    cwd: str,
    network: bool,
    env: Mapping[str, str],
    fixed: Sequence[str] = (),
    program: str = "",
) -> Launch:
    """``env``: the tenant's environment. ``argv`` may be empty, the tenant's command
    then appended to the Launch's (a persistent worker's); ``program`` is then its first
    word. ``fixed``: paths in ``writable`` the sandbox shows read-only. Without the
    sandbox nothing mounts them: they stay root's files the tenant may read and not
    change, but may rename or remove (their directories are its own)."""
    if sandbox is None and group is None:  # Popen alone: it switches, then execs
        return Launch(list(argv), run_as, dict(env))
    tenant = _in_environment(env, argv, program)
    inner, popen_as = tenant, run_as
    if sandbox is not None:
        inner = sandbox.command(
            tenant, run_as=run_as, writable=writable, cwd=cwd, network=network, fixed=fixed
        )
        popen_as = RunAs()
    elif group is not None and run_as.switches:  # the group is joined as root, then this
        if SETPRIV is None:
            raise RuntimeError("setpriv is needed to switch uids after a cgroup")
        # env looks the program up on PATH (the tenant's) as the tenant: setpriv would as
        # root (it still holds root's capabilities when it looks), and find what the
        # tenant cannot run.
        inner = [*dropped_to(SETPRIV, run_as), *tenant]
        popen_as = RunAs()
    if group is not None:
        inner = group.command(inner)
    return Launch(inner, popen_as, _launcher_env(), tenant_at=len(inner) - len(tenant))
