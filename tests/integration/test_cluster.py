"""`worker-runtime cluster up | status | down`: PostgreSQL and BuildGrid brought up on
Unix sockets (and BuildGrid on 127.0.0.1 too, for Buck2's RE client), idempotently, and
every process stopped by `down`. Needs Debian's PostgreSQL and the BuildGrid virtualenv
(scripts/bootstrap.sh installs both)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.clusters import cluster, private_cluster
from tests.conftest import wait_gone
from worker_runtime.cluster import postgres
from worker_runtime.cluster.layout import DEFAULT_BUILDGRID_VENV, ClusterLayout


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    with private_cluster() as directory:
        yield directory


def status(directory: Path) -> dict[str, dict[str, object]]:
    done = cluster("status", "--json", "--dir", str(directory))
    data: dict[str, dict[str, object]] = json.loads(done.stdout)
    return data


def test_up_is_idempotent_and_down_stops_every_process(cluster_dir: Path) -> None:
    first = cluster("up", "--dir", str(cluster_dir))
    assert first.returncode == 0, first.stderr
    assert f"unix://{cluster_dir}/run/buildgrid.sock" in first.stdout
    running = status(cluster_dir)
    assert running["buildgrid"]["answers"] is True and running["postgres"]["alive"] is True
    # PostgreSQL's socket is its owner's alone: with trust authentication, any local
    # user reaching it was its superuser.
    (socket_file,) = (cluster_dir / "run").glob(".s.PGSQL.*[0-9]")
    assert stat.S_IMODE(socket_file.stat().st_mode) == 0o700
    again = cluster("up", "--dir", str(cluster_dir))
    assert again.returncode == 0, again.stderr
    assert status(cluster_dir)["buildgrid"]["pid"] == running["buildgrid"]["pid"]  # left as it was
    # The stock client talks to it: the engine is a real REAPI server.
    bgd = DEFAULT_BUILDGRID_VENV / "bin" / "bgd"
    capabilities = subprocess.run(
        [str(bgd), "capabilities", "--remote", f"unix://{cluster_dir}/run/buildgrid.sock",
         "--instance-name", "main"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert capabilities.returncode == 0 and '"execEnabled": true' in capabilities.stdout
    # And on 127.0.0.1 over TCP, for Buck2's RE client, whose settings `up` prints.
    tcp = str(running["tcp_address"])
    assert tcp.startswith("grpc://127.0.0.1:")
    assert f"engine_address = {tcp}" in first.stdout and "[buck2_re_client]" in first.stdout
    over_tcp = subprocess.run(
        [str(bgd), "capabilities", "--remote", tcp.replace("grpc://", "http://"),
         "--instance-name", "main"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert over_tcp.returncode == 0 and '"execEnabled": true' in over_tcp.stdout, over_tcp.stderr
    assert cluster("down", "--dir", str(cluster_dir)).returncode == 0
    pids = [int(running[name]["pid"]) for name in ("postgres", "buildgrid")]  # type: ignore[call-overload]
    assert wait_gone(pids) == []
    assert processes_of(cluster_dir) == []
    # Up again: the same TCP port (it changed at every fresh start, and the section
    # pasted into .buckconfig went stale), unless another process has taken it.
    back = cluster("up", "--dir", str(cluster_dir))
    assert back.returncode == 0, back.stderr
    assert status(cluster_dir)["tcp_address"] == tcp and f"engine_address = {tcp}" in back.stdout
    assert cluster("down", "--dir", str(cluster_dir)).returncode == 0
    port = int(tcp.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        moved = cluster("up", "--dir", str(cluster_dir))
        assert moved.returncode == 0, moved.stderr
        assert status(cluster_dir)["tcp_address"] != tcp
    assert cluster("down", "--dir", str(cluster_dir)).returncode == 0
    stopped = cluster("status", "--dir", str(cluster_dir))
    assert stopped.returncode == 3 and ": down" in stopped.stdout


def test_a_cluster_brought_down_comes_back_up_with_its_data(cluster_dir: Path) -> None:
    assert cluster("up", "--dir", str(cluster_dir)).returncode == 0
    assert cluster("down", "--dir", str(cluster_dir)).returncode == 0
    back = cluster("up", "--dir", str(cluster_dir))
    assert back.returncode == 0, back.stderr
    assert status(cluster_dir)["buildgrid"]["answers"] is True


def test_a_missing_buildgrid_is_a_clear_error_and_leaves_nothing_running(
    cluster_dir: Path, tmp_path: Path
) -> None:
    env = {**_environ(), "WORKER_RUNTIME_BUILDGRID_VENV": str(tmp_path / "no-venv")}
    failed = cluster("up", "--dir", str(cluster_dir), env=env)
    assert failed.returncode == 1
    assert "BuildGrid is not installed" in failed.stderr and "scripts/bootstrap.sh" in failed.stderr
    assert processes_of(cluster_dir) == []  # PostgreSQL, started first, was stopped again


def test_executors_are_started_and_stopped_with_the_cluster(cluster_dir: Path) -> None:
    assert cluster("up", "--executors", "2", "--dir", str(cluster_dir)).returncode == 0
    executors: Any = status(cluster_dir)["executors"]
    assert len(executors) == 2 and all(e["alive"] for e in executors)
    pids = [e["pid"] for e in executors]
    # The same options, as the executors get them, leave them running (as root no
    # option is the sandbox); others start a fresh set that has them.
    again = ["up", "--executors", "2", *(["--sandbox"] if os.geteuid() == 0 else [])]
    assert cluster(*again, "--dir", str(cluster_dir)).returncode == 0
    kept: Any = status(cluster_dir)["executors"]
    assert [e["pid"] for e in kept] == pids
    # Options the executors would refuse are refused before any executor stops (they
    # once stopped the running set for one that could not start, leaving none).
    for bad in (["--limit-memory", "0"], ["--limit-cpus", "nan"], ["--limit-disk", "0"]):
        refused = cluster("up", "--executors", "2", *bad, "--dir", str(cluster_dir))
        assert refused.returncode == 2 and "must be more than 0" in refused.stderr
    still: Any = status(cluster_dir)["executors"]
    assert [e["pid"] for e in still] == pids and all(e["alive"] for e in still)
    assert (
        cluster("up", "--executors", "2", "--no-sandbox", "--dir", str(cluster_dir)).returncode == 0
    )
    fresh: Any = status(cluster_dir)["executors"]
    assert not {e["pid"] for e in fresh} & set(pids) and all(e["alive"] for e in fresh)
    for executor in fresh:
        argv = psutil.Process(int(executor["pid"])).cmdline()
        assert "--no-sandbox" in argv and "--sandbox-read-only" not in argv
    assert cluster("down", "--dir", str(cluster_dir)).returncode == 0
    assert processes_of(cluster_dir) == []


def _environ() -> dict[str, str]:
    return dict(os.environ)


def processes_of(directory: Path) -> list[str]:
    """Live processes (zombies aside) whose command line names the cluster's directory."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(directory) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{proc.pid} {cmdline}")
    return found


def test_a_dead_server_is_restarted_with_a_fresh_set_of_executors(cluster_dir: Path) -> None:
    assert cluster("up", "--executors", "2", "--dir", str(cluster_dir)).returncode == 0
    before: Any = status(cluster_dir)
    os.killpg(int(before["buildgrid"]["pid"]), signal.SIGKILL)
    assert wait_gone([int(before["buildgrid"]["pid"])]) == []
    back = cluster("up", "--executors", "2", "--dir", str(cluster_dir))
    assert back.returncode == 0, back.stderr
    after: Any = status(cluster_dir)
    assert after["buildgrid"]["answers"] is True
    old = [int(e["pid"]) for e in before["executors"]]
    assert wait_gone(old) == []  # the old server's bots were stopped, not left behind
    assert len(after["executors"]) == 2 and all(e["alive"] for e in after["executors"])
    assert cluster("down", "--dir", str(cluster_dir)).returncode == 0
    assert processes_of(cluster_dir) == []


def test_a_postgresql_that_pg_ctl_cannot_stop_is_stopped_by_signal(
    cluster_dir: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pg_ctl stop` failed (or gave up after its 60 s) and `down` still said "cluster
    down" with PostgreSQL running. Here pg_ctl fails at once: the server is stopped by
    PostgreSQL's immediate shutdown signal instead."""
    layout = ClusterLayout.from_dir(str(cluster_dir))
    server = postgres.start(layout)
    assert postgres.postmaster(layout) == server
    real = postgres.binaries()
    # As root the tools run as the server's user, who cannot enter pytest's 0700 tmp_path.
    fake = Path(tempfile.mkdtemp(prefix="fake-pg-", dir="/tmp"))
    fake.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(fake, ignore_errors=True))
    for tool in real.iterdir():
        (fake / tool.name).symlink_to(tool)
    (fake / "pg_ctl").unlink()
    (fake / "pg_ctl").write_text(
        "#!/bin/sh\necho 'pg_ctl: could not send stop signal' >&2\nexit 1\n"
    )
    (fake / "pg_ctl").chmod(0o755)
    monkeypatch.setattr(postgres, "binaries", lambda layout=None: fake)
    postgres.stop(layout)
    assert postgres.postmaster(layout) == 0
    assert wait_gone([server]) == []
