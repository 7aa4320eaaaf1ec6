"""`worker-runtime cluster` against the faults of a real machine: PIDs reused since they
were saved, a stale postmaster.pid, two `up`s at once, an interrupted `up`, a directory
whose path has a space, initdb killed half way, PostgreSQL dying under BuildGrid. Real
PostgreSQL and BuildGrid (scripts/bootstrap.sh), as in test_cluster.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.clusters import cluster, private_cluster
from tests.conftest import REPO_ROOT, RUNTIME, wait_gone
from tests.integration.test_cluster import processes_of, status
from worker_runtime.cluster import processes
from worker_runtime.socket_paths import MAX_SOCKET_PATH


def signals_as_a_terminal_has_them() -> None:
    """In a child before it starts: the default actions of SIGINT, SIGTERM and SIGHUP. A
    shell ignores SIGINT in the commands it runs in the background without job control
    (CI started that way, or `cmd &` in a script), `nohup` ignores SIGHUP, children
    inherit both, and `cluster up` leaves a signal it finds ignored ignored: a test of
    how it stops on one must give it back."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


@contextmanager
def bystander(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process leading a process group of its own (as a daemon would), which
    the cluster must never signal; ``args`` go on its command line. SIGINT ends it."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", *args],
        start_new_session=True,
        preexec_fn=signals_as_a_terminal_has_them,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@contextmanager
def spaced_cluster_dir() -> Iterator[Path]:
    """A cluster directory whose path holds spaces (reachable by the postgres user as
    root, like tests/clusters.py's), brought down and removed at the end."""
    directory = Path(tempfile.mkdtemp(prefix="wr cluster "))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        down = cluster("down", "--dir", str(directory))
        shutil.rmtree(directory, ignore_errors=True)
        assert down.returncode == 0, down.stderr


def kill_processes_of(directory: Path) -> None:
    """SIGKILL, by PID, to every process whose command line names ``directory``, and
    their children."""
    found = []
    for line in processes_of(directory):
        try:
            process = psutil.Process(int(line.split()[0]))
            found += [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for process in found:
        with suppress(psutil.NoSuchProcess):
            process.kill()
    assert wait_gone([p.pid for p in found]) == []


def write_state(directory: Path, **fields: object) -> None:
    (directory / "state.json").write_text(json.dumps(fields))


def stale_lock(pid: int, directory: Path) -> str:
    """A postmaster.pid (and socket lock) as a server that died left it, naming ``pid``."""
    return f"{pid}\n{directory / 'postgres' / 'data'}\n1700000000\n5432\n{directory / 'run'}\n\n  0 0\nready   \n"


def test_a_reused_pid_in_the_state_is_never_signalled() -> None:
    with private_cluster() as directory, bystander() as other:
        # A state.json naming a PID that an unrelated process (a group leader) has now.
        write_state(
            directory, postgres_pid=other.pid, buildgrid_pid=other.pid, executor_pids=[other.pid]
        )
        down = cluster("down", "--dir", str(directory))
        assert down.returncode == 0, down.stderr
        assert other.poll() is None
        write_state(directory, buildgrid_pid=other.pid, executor_pids=[other.pid])
        up = cluster("up", "--dir", str(directory))
        assert up.returncode == 0, up.stderr
        assert other.poll() is None
        assert status(directory)["buildgrid"]["pid"] != other.pid
        # Even one whose command line names the cluster's directory is not taken for the
        # process recorded when it started at another time.
        with bystander(str(directory / "executors" / "x")) as lookalike:
            state = json.loads((directory / "state.json").read_text())
            started = processes.start_time(lookalike.pid)
            assert started is not None
            state["executor_pids"].append(lookalike.pid)
            state["executor_metrics_ports"].append(0)
            state["start_times"][str(lookalike.pid)] = started - 1
            (directory / "state.json").write_text(json.dumps(state))
            assert cluster("status", "--dir", str(directory)).returncode == 0
            executors: Any = status(directory)["executors"]
            assert [(e["pid"], e["alive"]) for e in executors][-1] == (lookalike.pid, False)
            pids = [int(state["postgres_pid"]), int(state["buildgrid_pid"])]
            pids += [int(e["pid"]) for e in executors[:-1]]
            down = cluster("down", "--dir", str(directory))
            assert down.returncode == 0, down.stderr
            assert wait_gone(pids) == []
            assert lookalike.poll() is None and other.poll() is None
            mine = [
                line for line in processes_of(directory) if int(line.split()[0]) != lookalike.pid
            ]
            assert mine == []


def test_a_stale_postmaster_pid_naming_another_process_is_not_taken_for_the_server() -> None:
    with private_cluster() as directory, bystander() as other:
        assert cluster("up", "--dir", str(directory)).returncode == 0
        assert cluster("down", "--dir", str(directory)).returncode == 0
        # The server died without removing its lock files, and its PID went to another
        # process: PostgreSQL's own tools take that process for the server.
        lock = stale_lock(other.pid, directory)
        (directory / "postgres" / "data" / "postmaster.pid").write_text(lock)
        (directory / "run" / ".s.PGSQL.5432.lock").write_text(lock)
        up = cluster("up", "--dir", str(directory))
        assert up.returncode == 0, up.stderr
        running: Any = status(directory)
        assert running["postgres"]["answers"] is True and running["postgres"]["pid"] != other.pid
        assert other.poll() is None  # never sent pg_ctl's SIGINT
        assert cluster("down", "--dir", str(directory)).returncode == 0
        assert wait_gone([running["postgres"]["pid"]]) == []
        # `down` on a stale lock removes it and leaves its PID's process alone.
        (directory / "postgres" / "data" / "postmaster.pid").write_text(lock)
        assert cluster("down", "--dir", str(directory)).returncode == 0
        assert other.poll() is None
        assert not (directory / "postgres" / "data" / "postmaster.pid").exists()


def test_two_concurrent_ups_make_one_cluster() -> None:
    with private_cluster() as directory:
        command = [*RUNTIME, "cluster", "up", "--executors", "1", "--dir", str(directory)]
        ups = [
            subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        results = [up.communicate(timeout=180) for up in ups]
        assert [up.returncode for up in ups] == [0, 0], [err for _, err in results]
        running: Any = status(directory)
        assert running["buildgrid"]["answers"] is True and len(running["executors"]) == 1
        servers = [line for line in processes_of(directory) if "server start" in line]
        executors = [line for line in processes_of(directory) if " executor " in line]
        assert [int(line.split()[0]) for line in servers] == [running["buildgrid"]["pid"]]
        assert [int(line.split()[0]) for line in executors] == [running["executors"][0]["pid"]]
        assert cluster("down", "--dir", str(directory)).returncode == 0
        assert processes_of(directory) == []


def fake_buildgrid(venv: Path, stubborn: bool = False) -> None:
    """A BuildGrid virtualenv whose server starts and never answers: `up` waits for it.
    ``stubborn``: it ignores SIGTERM (stopping it takes the 10 s grace, then SIGKILL)."""
    (venv / "lib" / "python3.13" / "site-packages" / "buildgrid-0.9.1.dist-info").mkdir(
        parents=True
    )
    (venv / "bin").mkdir()
    bgd = venv / "bin" / "bgd"
    # Stubborn: it says it is ready once it ignores SIGTERM (a signal sent before would
    # end it at once, under a loaded machine's slow start).
    ready = venv / "ready"
    ignore = (
        f"signal.signal(signal.SIGTERM, signal.SIG_IGN); open({str(ready)!r}, 'w').close(); "
        if stubborn
        else ""
    )
    bgd.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = migrate ]; then exit 0; fi\n'
        f'exec {sys.executable} -c "import signal, time; {ignore}time.sleep(600)" "$@"\n'
    )
    bgd.chmod(0o755)


def nohup_as_it_has_it() -> None:
    """In a child before it starts: SIGHUP ignored (`nohup`), SIGTERM as by default."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def up_waiting_for_its_server(
    tmp_path: Path,
    stubborn: bool = False,
    preexec: Callable[[], None] = signals_as_a_terminal_has_them,
) -> Iterator[tuple[Path, subprocess.Popen[str], int]]:
    """(cluster directory, `cluster up` process, its server's PID): `up` started on a
    fake BuildGrid (``stubborn``: see fake_buildgrid) that never answers, once it has
    recorded the server it waits for; killed at the end if it still runs."""
    fake_buildgrid(tmp_path / "venv", stubborn=stubborn)
    env = {**os.environ, "WORKER_RUNTIME_BUILDGRID_VENV": str(tmp_path / "venv")}
    with private_cluster() as directory:
        up = subprocess.Popen(
            [*RUNTIME, "cluster", "up", "--dir", str(directory)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=preexec,
        )  # fmt: skip
        try:
            server = 0
            while not server and up.poll() is None:  # recorded as soon as it is started
                with suppress(OSError, ValueError, KeyError):
                    server = json.loads((directory / "state.json").read_text())["buildgrid_pid"]
                time.sleep(0.01)
            assert server and up.poll() is None
            deadline = time.monotonic() + 60
            while stubborn and not (tmp_path / "venv" / "ready").exists():
                assert time.monotonic() < deadline, "the stubborn server never got ready"
                time.sleep(0.01)
            yield directory, up, server
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupted_up_stops_what_it_started(tmp_path: Path, how: signal.Signals) -> None:
    """Ctrl-C, a CI step's timeout (SIGTERM) or a closed terminal (SIGHUP): by their
    default action the last two left what it had started running."""
    with up_waiting_for_its_server(tmp_path) as (directory, up, server):
        up.send_signal(how)
        _, err = up.communicate(timeout=120)
        assert up.returncode == 128 + how, err
        assert err.strip() == "worker-runtime cluster up: interrupted; what it started is stopped"
        assert wait_gone([server]) == []
        assert processes_of(directory) == []  # PostgreSQL too
        assert not (directory / "state.json").exists()


def test_a_second_signal_does_not_cut_the_cleanup_of_an_interrupted_up_short(
    tmp_path: Path,
) -> None:
    """A closed terminal often sends SIGHUP twice: the second, raised inside the cleanup
    the first began, left what `up` had started running."""
    with up_waiting_for_its_server(tmp_path, stubborn=True) as (directory, up, server):
        up.send_signal(signal.SIGHUP)
        time.sleep(1)  # its cleanup waits for the server that ignores SIGTERM (10 s)
        assert up.poll() is None
        up.send_signal(signal.SIGHUP)
        _, err = up.communicate(timeout=120)
        assert up.returncode == 128 + signal.SIGHUP, err
        assert wait_gone([server]) == []
        assert processes_of(directory) == []  # PostgreSQL too
        assert not (directory / "state.json").exists()


def test_an_up_started_under_nohup_goes_on_past_a_sighup(tmp_path: Path) -> None:
    """`nohup worker-runtime cluster up &`, then a logout: its handler took the SIGHUP
    that nohup had it ignore, and the start was torn down."""
    with up_waiting_for_its_server(tmp_path, preexec=nohup_as_it_has_it) as (
        directory,
        up,
        server,
    ):
        up.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert up.poll() is None  # still waiting for its server
        up.send_signal(signal.SIGTERM)  # then stopped, as without nohup
        _, err = up.communicate(timeout=120)
        assert up.returncode == 128 + signal.SIGTERM, err
        assert wait_gone([server]) == []
        assert processes_of(directory) == []


def test_a_cluster_dir_whose_path_has_a_space_comes_up() -> None:
    with spaced_cluster_dir() as directory:
        up = cluster("up", "--executors", "1", "--dir", str(directory))
        assert up.returncode == 0, up.stderr
        running: Any = status(directory)
        assert running["postgres"]["answers"] is True and running["buildgrid"]["answers"] is True
        assert [e["alive"] for e in running["executors"]] == [True]
        assert cluster("status", "--dir", str(directory)).returncode == 0
        assert cluster("down", "--dir", str(directory)).returncode == 0
        assert processes_of(directory) == []


def test_a_data_dir_initdb_left_half_done_is_made_again() -> None:
    with private_cluster() as directory:
        up = subprocess.Popen(
            [*RUNTIME, "cluster", "up", "--dir", str(directory)],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            pg_dir = directory / "postgres"
            while up.poll() is None and not any(pg_dir.glob("*/PG_VERSION")):
                time.sleep(0.005)
            up.kill()  # and initdb with it, half way
            up.wait()
            kill_processes_of(directory)
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
        assert not (pg_dir / "data" / "global" / "pg_control").exists()
        back = cluster("up", "--dir", str(directory))
        assert back.returncode == 0, back.stderr
        assert status(directory)["postgres"]["answers"] is True
    # A data directory an older checkout's initdb left half done is made again too.
    with private_cluster() as directory:
        (directory / "postgres" / "data").mkdir(parents=True)
        (directory / "postgres" / "data" / "PG_VERSION").write_text("15\n")
        back = cluster("up", "--dir", str(directory))
        assert back.returncode == 0, back.stderr
        assert status(directory)["postgres"]["answers"] is True


def test_a_dead_postgres_is_reported_and_brought_back_by_up() -> None:
    with private_cluster("--executors", "1") as directory:
        before: Any = status(directory)
        os.kill(before["postgres"]["pid"], signal.SIGINT)  # its fast shutdown
        assert wait_gone([before["postgres"]["pid"]]) == []
        degraded = cluster("status", "--dir", str(directory))
        assert degraded.returncode == 1 and ": degraded" in degraded.stdout
        assert status(directory)["state"] == "degraded"
        up = cluster("up", "--dir", str(directory))
        assert up.returncode == 0, up.stderr
        after: Any = status(directory)
        assert after["state"] == "up" and after["postgres"]["answers"] is True
        # The server came back with its database, and as many executors as ran.
        assert after["buildgrid"]["pid"] != before["buildgrid"]["pid"]
        assert len(after["executors"]) == 1 and after["executors"][0]["alive"] is True
        assert wait_gone([int(e["pid"]) for e in before["executors"]]) == []
        assert cluster("down", "--dir", str(directory)).returncode == 0
        assert processes_of(directory) == []


def test_a_plain_up_keeps_the_executors_that_run() -> None:
    with private_cluster("--executors", "2") as directory:
        before: Any = status(directory)["executors"]
        assert cluster("up", "--dir", str(directory)).returncode == 0
        after: Any = status(directory)["executors"]
        assert [e["pid"] for e in after] == [e["pid"] for e in before]
        assert all(e["alive"] for e in after)
        negative = cluster("up", "--executors", "-1", "--dir", str(directory))
        still: Any = status(directory)["executors"]
        assert negative.returncode == 2 and "must be 0 or more" in negative.stderr
        assert [e["pid"] for e in still] == [e["pid"] for e in before]


@pytest.mark.parametrize("command", ["up", "down"])
def test_a_cluster_dir_that_is_a_file_is_a_clear_error(tmp_path: Path, command: str) -> None:
    (tmp_path / "file").write_text("")
    failed = cluster(command, "--dir", str(tmp_path / "file"))
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert "is not a directory" in failed.stderr and str(tmp_path / "file") in failed.stderr


def test_a_cluster_dir_too_long_for_its_sockets_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    directory = tmp_path / ("d" * (MAX_SOCKET_PATH - len(str(tmp_path))))
    failed = cluster("up", "--dir", str(directory))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert f"at most {MAX_SOCKET_PATH}" in failed.stderr
    assert str(directory / "run" / "buildgrid.sock") in failed.stderr
    assert not directory.exists()  # nothing was made, nor started


@pytest.mark.needs_root("PostgreSQL runs as the postgres user only under root")
def test_a_cluster_dir_the_postgres_user_cannot_reach_is_a_clear_error(tmp_path: Path) -> None:
    """A checkout under /root (0700): initdb, run as postgres, failed with "Permission
    denied" on a directory it had just been given, naming no way out."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    failed = cluster("up", "--dir", str(private / "cluster"))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert f"cannot pass through {private} (mode 0700)" in failed.stderr
    assert f"chmod o+x {private}" in failed.stderr
    assert processes_of(private) == []


def test_a_database_made_by_a_postgresql_no_longer_installed_is_a_clear_error() -> None:
    """The newest installed major was taken for any data directory: after an upgrade,
    `up` failed in pg_ctl with "database files are incompatible with server". The major
    that made it is used, or named with what to do."""
    with private_cluster() as directory:
        data = directory / "postgres" / "data"
        (data / "global").mkdir(parents=True)
        (data / "global" / "pg_control").write_text("")
        (data / "PG_VERSION").write_text("9\n")
        failed = cluster("up", "--dir", str(directory))
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
        assert "was made by PostgreSQL 9, which is not installed" in failed.stderr
        assert "apt-get install postgresql-9" in failed.stderr
        assert f"remove {directory / 'postgres'}" in failed.stderr
        assert (data / "PG_VERSION").read_text() == "9\n"  # nothing of it touched
        assert processes_of(directory) == []
        down = cluster("down", "--dir", str(directory))  # nothing runs: down works
        assert down.returncode == 0, down.stderr
