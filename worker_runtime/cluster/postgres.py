"""PostgreSQL for BuildGrid's scheduler: Debian's server binaries, a private data
directory, a Unix socket only (no TCP), settings for speed over durability. PostgreSQL
refuses to run as root, so as root every server command runs as the `postgres` user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from worker_runtime.cluster.layout import ClusterLayout
from worker_runtime.errors import ClusterError

SETTINGS = (
    "-c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=200"
)


def binaries() -> Path:
    """The newest Debian PostgreSQL bin directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if not found:
        raise ClusterError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): "
            "run scripts/bootstrap.sh, or apt-get install postgresql"
        )
    return Path(found[-1]).parent


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


def start(layout: ClusterLayout) -> int:
    """Initialises the data directory if needed and starts the server. Returns its PID."""
    bin_dir = binaries()
    log = layout.logs / "postgres.log"
    for directory in (layout.root, layout.pg_dir, layout.run_dir, layout.logs):
        directory.mkdir(parents=True, exist_ok=True)
    for directory in (layout.pg_dir, layout.run_dir):
        _server_owner(directory)
    if not log.exists():
        log.touch()
    _server_owner(log)
    if not (layout.pg_data / "PG_VERSION").exists():
        shutil.rmtree(layout.pg_data, ignore_errors=True)
        _run(
            [str(bin_dir / "initdb"), "-D", str(layout.pg_data), "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8"],
            "initdb", log,
        )  # fmt: skip
    _run(
        [str(bin_dir / "pg_ctl"), "-D", str(layout.pg_data), "-l", str(log), "-w", "-t", "30",
         "-o", f"-k {layout.run_dir} {SETTINGS}", "start"],
        "starting PostgreSQL", log,
    )  # fmt: skip
    return pid(layout)


def ensure_database(layout: ClusterLayout, name: str) -> None:
    """Creates database ``name`` on the running server unless it exists."""
    bin_dir = binaries()
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
    """The running server's PID (from postmaster.pid), or 0."""
    try:
        return int((layout.pg_data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return 0


def stop(layout: ClusterLayout) -> None:
    if not (layout.pg_data / "postmaster.pid").exists():
        return
    command = [str(binaries() / "pg_ctl"), "-D", str(layout.pg_data), "-m", "fast", "-w", "stop"]
    subprocess.run(_as_server_user(command), capture_output=True, text=True)
