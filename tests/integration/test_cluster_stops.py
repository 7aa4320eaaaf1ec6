"""How `cluster down` (and an `up` that replaces them) stops the executors: all asked at
once, then waited for on one deadline (processes.stop_all); and the executors' readiness
probe, which no proxy setting may divert. No cluster is started: stand-in processes and a
stand-in metrics page."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_gone
from worker_runtime.cluster import commands, processes

#: Stops on SIGTERM only once the other stand-in has been asked too (its marker made),
#: and says so; a stop that asks one process after another never gets there.
STAND_IN = """
import os, signal, sys, time
me, other, done = sys.argv[1:4]
def stop(*_):
    open(me, "w").close()
    for _ in range(400):
        if os.path.exists(other):
            open(done, "w").close()
            sys.exit(0)
        time.sleep(0.025)
    sys.exit(1)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(120)  # and ends by itself
"""


def test_executors_are_all_asked_to_stop_before_any_is_waited_for(tmp_path: Path) -> None:
    """One after another, the second executor was asked only once the first had gone:
    N executors took N shutdown graces, and each went on taking leases meanwhile."""
    names = ("a", "b")
    started: list[subprocess.Popen[bytes]] = []
    try:
        for me, other in (names, names[::-1]):
            process = subprocess.Popen(
                [sys.executable, "-c", STAND_IN, str(tmp_path / f"{me}.asked"),
                 str(tmp_path / f"{other}.asked"), str(tmp_path / f"{me}.done"), str(tmp_path)],
                stdout=subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
            started.append(process)
            assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        recorded = [(p.pid, processes.start_time(p.pid)) for p in started]
        processes.stop_all(recorded, grace_s=30, marker=str(tmp_path))
        assert wait_gone([p.pid for p in started]) == []
        # Each stopped by itself once both were asked, none killed.
        assert all((tmp_path / f"{name}.done").exists() for name in names)
    finally:
        for process in started:  # by PID, whatever happened above
            process.kill()
            process.wait()


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        processes.stop_all([(stubborn.pid, None)], grace_s=0.2, marker=str(tmp_path))
        # Gone (killed: it would have slept ten minutes). Its exit status may be lost: the
        # stop's liveness check reaps a zombie child of its own process.
        assert wait_gone([stubborn.pid]) == []
    finally:
        stubborn.kill()
        stubborn.wait()


def test_a_process_naming_a_sibling_directory_is_not_taken_for_the_clusters(
    tmp_path: Path,
) -> None:
    """A recorded PID now held by a process whose arguments name ``<dir>2`` (a second
    cluster's PostgreSQL, `-D /c/pg2` for `/c/pg`) is not this cluster's to signal."""
    ours = tmp_path / "pg"
    sibling = subprocess.Popen(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)",
         "-D", f"{ours}2", f"--log=/elsewhere{ours}/log"],
        stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert sibling.stdout is not None and sibling.stdout.readline() == b"ready\n"
        assert not processes.alive(sibling.pid, marker=str(ours))
        processes.stop_all([(sibling.pid, None)], grace_s=0.2, marker=str(ours))
        assert sibling.poll() is None  # never signalled
        assert processes.alive(sibling.pid, marker=f"{ours}2")
        assert processes.alive(sibling.pid, marker=str(tmp_path))  # a directory above
        assert processes.alive(sibling.pid, marker="/elsewhere")
    finally:
        sibling.kill()
        sibling.wait()


@pytest.mark.parametrize(
    ("argument", "names_it"),
    [
        ("/c/pg", True),
        ("/c/pg/", True),
        ("/c/pg/postgresql.conf", True),
        ("--data=/c/pg", True),
        ("unix:/c/pg/run/socket", True),
        ("unix:///c/pg/run/buildgrid.sock", True),  # the executors' --server
        ('"/c/pg/run"', True),
        ("/c/pg2", False),
        ("/d/c/pg", False),
        ("x/c/pg", False),
        ("unix://x/c/pg", False),
    ],
)
def test_a_path_is_named_by_an_argument_as_a_whole_path(argument: str, names_it: bool) -> None:
    assert processes.names_path(f"python\0{argument}\0".encode(), "/c/pg") is names_it


@pytest.fixture
def metrics_page() -> Iterator[int]:
    """A stand-in executor metrics page on 127.0.0.1; its port."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"executor_leases_total 0\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("variable", ["http_proxy", "HTTP_PROXY"])
def test_an_executor_is_seen_ready_whatever_the_proxy_settings(
    metrics_page: int, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """With a proxy set and 127.0.0.1 not in `no_proxy`, the probe went through the proxy:
    every `up --executors N` failed after 60 s ("did not start") and took the cluster
    down with it."""
    # urlopen keeps the opener it first made, with the proxies of that moment.
    monkeypatch.setattr(urllib.request, "_opener", None)
    monkeypatch.setenv(variable, "http://127.0.0.1:9")  # the discard port: nothing there
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert commands._answers(metrics_page)
