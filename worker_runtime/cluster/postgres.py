"""PostgreSQL for BuildGrid's scheduler: Debian's server binaries, a private data
directory, a Unix socket only (no TCP), settings for speed over durability. PostgreSQL
refuses to run as root, so as root every server command runs as the `postgres` user."""

from __future__ import annotations

import contextlib
import glob
import grp
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from worker_runtime.cluster import processes
from worker_runtime.cluster.layout import ClusterLayout
from worker_runtime.errors import ClusterError

#: No TCP; its socket only for its owner (root passes anyway): at PostgreSQL's default
#: of 0777, with trust authentication, any local user was its superuser.
SETTINGS = (
    "-c listen_addresses='' -c unix_socket_permissions=0700 -c fsync=off "
    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
)


def binaries(layout: ClusterLayout | None = None) -> Path:
    """The Debian PostgreSQL bin directory: of the major version that made ``layout``'s
    data directory (another major's server refuses it), else the newest installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if not found:
        raise ClusterError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): "
            "run scripts/bootstrap.sh, or apt-get install postgresql"
        )
    made_by = _data_version(layout) if layout is not None else None
    if made_by is None:
        return Path(found[-1]).parent
    for path in found:
        if path.split("/")[4] == made_by:
            return Path(path).parent
    installed = ", ".join(path.split("/")[4] for path in found)
    assert layout is not None
    raise ClusterError(
        f"the cluster's database {layout.pg_data} was made by PostgreSQL {made_by}, which is "
        f"not installed (installed: {installed}): install it (apt-get install "
        f"postgresql-{made_by}), or remove {layout.pg_dir} to make the database afresh with "
        f"PostgreSQL {installed.rsplit(', ', 1)[-1]} (it holds only the scheduler's state: "
        "run `worker-runtime cluster down` first)"
    )


def _data_version(layout: ClusterLayout) -> str | None:
    """The major version PG_VERSION records in the data directory, or None (none made,
    or one initdb left half done, which ``start`` makes again)."""
    if not (layout.pg_data / "global" / "pg_control").exists():
        return None
    try:
        made_by = (layout.pg_data / "PG_VERSION").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return made_by if made_by.replace(".", "").isdigit() else None


def _version(path: str) -> tuple[int, ...]:
    return tuple(int(p) for p in path.split("/")[4].split(".") if p.isdigit())


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def _server_owner(path: Path) -> None:
    """As root, hand a directory the server writes to the postgres user."""
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)


def _run(command: list[str], what: str, log: Path) -> None:
    done = subprocess.run(_as_server_user(command), capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(
            f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-600:]}"
            f"\n  server log: {log}"
        )


def _passes_as_server_user(directory: Path) -> bool:
    """Whether the postgres user can pass through ``directory``, asked of the system (an
    ACL, or a group of its, the mode bits do not show)."""
    try:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(directory)],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):  # no runuser, a user lookup that hangs
        return False
    return done.returncode == 0


def _has_acl(directory: Path) -> bool:
    try:
        return bool(os.getxattr(directory, "system.posix_acl_access"))
    except OSError:  # none, or no ACLs on this file system
        return False


def _check_reachable_by_server(directory: Path) -> None:
    """As root, the server runs as the postgres user, which must be able to pass through
    every directory above ``directory``: a checkout under /root (0700) failed in initdb
    with a "Permission denied" on a directory it had just been given."""
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam("postgres")
    groups = {user.pw_gid, *(g.gr_gid for g in grp.getgrall() if "postgres" in g.gr_mem)}
    for parent in directory.resolve().parents:
        info = parent.stat()
        if info.st_uid == user.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        # An ACL may let it pass where the bits say no, or stop it where they say yes.
        if (not allowed or _has_acl(parent)) and not _passes_as_server_user(parent):
            raise ClusterError(
                f"PostgreSQL runs as the postgres user under root, and that user cannot "
                f"pass through {parent} (mode {stat.S_IMODE(info.st_mode):04o}) to reach "
                f"{directory}: let it (`chmod o+x {parent}`, or an ACL: `setfacl -m "
                f"u:postgres:x {parent}`), or put the cluster elsewhere "
                "(`--dir /var/tmp/worker-runtime-cluster`)"
            )


def start(layout: ClusterLayout) -> int:
    """Initialises the data directory if needed and starts the server, unless it runs and
    answers already. Returns its PID."""
    bin_dir = binaries(layout)
    log = layout.logs / "postgres.log"
    for directory in (layout.root, layout.pg_dir, layout.run_dir, layout.logs):
        directory.mkdir(parents=True, exist_ok=True)
    # Its data and socket directories are both in the cluster's: one walk covers both.
    _check_reachable_by_server(layout.pg_dir)
    for directory in (layout.pg_dir, layout.run_dir):
        _server_owner(directory)
    if not log.exists():
        log.touch()
    _server_owner(log)
    running = postmaster(layout)
    if running:
        if answers(layout, wait_s=30):
            return running
        raise ClusterError(
            f"PostgreSQL (PID {running}) runs in {layout.pg_data} but does not answer on "
            f"{layout.run_dir}; server log: {log}"
        )
    _remove_stale_locks(layout)
    if not (layout.pg_data / "global" / "pg_control").exists():
        # initdb writes into a directory of its own, renamed into place once it has
        # succeeded: one it left half done (killed) is never taken for a data directory.
        unfinished = layout.pg_dir / "data.initdb"
        shutil.rmtree(unfinished, ignore_errors=True)
        shutil.rmtree(layout.pg_data, ignore_errors=True)  # an older checkout's, half done
        _run(
            [str(bin_dir / "initdb"), "-D", str(unfinished), "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8"],
            "initdb", log,
        )  # fmt: skip
        unfinished.rename(layout.pg_data)
    # pg_ctl hands -o to /bin/sh: the socket directory is quoted for it, and double-quoted
    # for PostgreSQL's list of directories (a path may hold spaces or commas).
    sockets = shlex.quote('"' + str(layout.run_dir).replace('"', '""') + '"')
    _run(
        [str(bin_dir / "pg_ctl"), "-D", str(layout.pg_data), "-l", str(log), "-w", "-t", "30",
         "-o", f"-k {sockets} {SETTINGS}", "start"],
        "starting PostgreSQL", log,
    )  # fmt: skip
    return pid(layout)


def ensure_database(layout: ClusterLayout, name: str) -> None:
    """Creates database ``name`` on the running server unless it exists."""
    bin_dir = binaries(layout)
    exists = subprocess.run(
        _as_server_user(
            [str(bin_dir / "psql"), "-h", str(layout.run_dir), "-U", "postgres", "-tAc",
             f"select 1 from pg_database where datname = '{name}'"]
        ),
        capture_output=True, text=True,
    )  # fmt: skip
    if exists.stdout.strip() != "1":
        _run(
            [str(bin_dir / "createdb"), "-h", str(layout.run_dir), "-U", "postgres", name],
            "createdb", layout.logs / "postgres.log",
        )  # fmt: skip


def pid(layout: ClusterLayout) -> int:
    """The PID postmaster.pid names (the server's, unless the file is stale), or 0."""
    try:
        return int((layout.pg_data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return 0


def postmaster(layout: ClusterLayout) -> int:
    """The PID of this data directory's running server, or 0. postmaster.pid may be
    stale and name a PID another process has now, which PostgreSQL's tools take for a
    server (they only check that the PID exists): a server's command line names its
    data directory."""
    found = pid(layout)
    return found if processes.alive(found, marker=str(layout.pg_data)) else 0


def answers(layout: ClusterLayout, wait_s: float = 0.0) -> bool:
    """Whether the server accepts connections on its socket (trying for up to ``wait_s``:
    one starting up rejects them for a while)."""
    command = [str(binaries(layout) / "pg_isready"), "-q", "-h", str(layout.run_dir), "-U", "postgres",
               "-t", "5"]  # fmt: skip
    deadline = time.monotonic() + wait_s
    while True:
        done = subprocess.run(_as_server_user(command), capture_output=True)
        if done.returncode == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _remove_stale_locks(layout: ClusterLayout) -> None:
    """Removes lock files no running server of this data directory holds: PostgreSQL
    refuses to start while the PID in one exists, whatever process has it now."""
    for lock in (layout.pg_data / "postmaster.pid", layout.run_dir / ".s.PGSQL.5432.lock"):
        lock.unlink(missing_ok=True)


def stop(layout: ClusterLayout) -> None:
    """Stops this data directory's server; a stale postmaster.pid (its PID dead, or
    another process's now) is removed, never acted on: `pg_ctl stop` would signal it."""
    if not postmaster(layout):
        _remove_stale_locks(layout)
        return
    try:
        command = [str(binaries(layout) / "pg_ctl"), "-D", str(layout.pg_data), "-m", "fast",
                   "-w", "stop"]  # fmt: skip
        done = subprocess.run(_as_server_user(command), capture_output=True, text=True)
        said = f"said {(done.stderr or done.stdout).strip() or f'exit {done.returncode}'}"
    except ClusterError as exc:  # its version's tools are gone (the server runs on)
        said = f"not run: {exc}"
    # `pg_ctl stop` gave up (it waits 60 s) or failed: PostgreSQL's immediate shutdown,
    # then SIGKILL; a server that outlives both is an error, and the state stays.
    for signum in (signal.SIGQUIT, signal.SIGKILL):
        server = postmaster(layout)
        if not server:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(server, signum)
        deadline = time.monotonic() + 10
        while postmaster(layout) and time.monotonic() < deadline:
            time.sleep(0.05)
    if server := postmaster(layout):
        raise ClusterError(
            f"PostgreSQL (pid {server}) did not stop: `pg_ctl stop` {said}; "
            f"its log: {layout.logs / 'postgres.log'}"
        )
