"""Benchmark: how soon a worker front serves Buck2's socket at the start of a command,
with the project's daemon already running, against Buck2's real poll schedule.

Buck2 starts the worker tool and then tries to connect to its socket at 0 ms, then after
50, 100, 200 and 400 ms backoffs (at 0, 50, 150 and 350 ms; the backoff doubles to 500 ms:
docs/running-under-buck2.md). A connect succeeds once the socket listens, but Buck2's
wait for the worker (its ``WorkerInit`` stage) ends only when the server behind it
answers the HTTP/2 handshake (measured under the real Buck2:
``benchmarks/buck2_worker_start.py``). Each round starts the tool exactly as Buck2 does
for a ``worker_tool`` (the toolchains' launcher, then ``worker-runtime serve --config
FILE``, in the project root), polls its socket every millisecond to find when it first
listens, sends HTTP/2's client preface on that connection and times the server's first
frame; Buck2's wait ends at the later of the first poll at or after the listen and that
answer.

The floor, in the same run: the same interpreter started to do nothing but listen on a
Unix socket and answer the handshake's first frame (``python -c``), timed the same way.
Both again with a process spinning on every CPU (``busy_machine``): Buck2 starts a
worker when a build reaches its first action for it, with the other actions running.

Then the end of a command: Buck2's SIGTERM to the front's process group, and the time
until the front exits, with a request in flight (a 3 s one) against the floor of an idle
front. Buck2 sends SIGKILL 10 s after SIGTERM (``[build]
persistent_worker_shutdown_timeout_s``). Writes benchmarks/results/front_start.json.

The package's bytecode is brought up to date first, as a wheel's install leaves it
(``compile_runtime``): where ``PYTHONDONTWRITEBYTECODE`` is set, each front would
otherwise compile its modules from source at every start.

Run: ``.venv/bin/python -m benchmarks.front_start [--rounds N]``.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.results import add_output_argument, emit
from benchmarks.scratch import scratch_dir
from worker_runtime.buck2.http2 import PREFACE, SETTINGS, frame
from workers_dev.emulator import Buck2Worker, WorkerRequestError

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "toolchains" / "worker-runtime-launcher"
RUNTIME = ROOT / ".venv" / "bin" / "worker-runtime"
FAKE_WORKER = ROOT / "tests" / "backends" / "fake_worker.py"
TARGET_MS = 60.0


def compile_runtime() -> None:
    """Brings the runtime package's bytecode up to date (``scripts/bootstrap.sh`` does it
    too; edits since make it stale), so that a front starts as an installed one does."""
    if not compileall.compile_dir(ROOT / "worker_runtime", quiet=1):
        raise RuntimeError("compiling worker_runtime's bytecode failed")


def buck2_polls() -> list[float]:
    """The times (ms after the start) at which Buck2 tries to connect."""
    times, at, backoff = [0.0], 0.0, 50.0
    while at < 60_000:
        at += backoff
        times.append(at)
        backoff = min(backoff * 2, 500.0)
    return times


POLLS = buck2_polls()


#: HTTP/2's client preface and an empty SETTINGS frame: what Buck2's channel sends first.
CLIENT_PREFACE = PREFACE + frame(SETTINGS, 0, 0)


def ready_after_ms(
    command: list[str], socket_path: Path, env: dict[str, str], cwd: Path
) -> tuple[float, float]:
    """Starts ``command``; returns when ``socket_path`` first took a connection, and when
    the server answered the HTTP/2 preface sent on it (ms after the start)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while True:
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(socket_path))
                except OSError:
                    pass
                else:
                    listening = (time.perf_counter() - start) * 1000
                    probe.settimeout(30)
                    probe.sendall(CLIENT_PREFACE)
                    if not probe.recv(9):
                        raise RuntimeError(f"{command[0]} closed the connection unanswered")
                    return listening, (time.perf_counter() - start) * 1000
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode} before serving")
            if time.perf_counter() - start > 30:
                raise RuntimeError(f"{command[0]} did not serve {socket_path} within 30 s")
            time.sleep(0.001)
    finally:
        process.terminate()
        process.wait(timeout=60)


def buck2_sees_ms(listening_ms: float, served_ms: float) -> float:
    """When Buck2's wait ends: at its first poll at or after ``listening_ms``, or when the
    server answers (``served_ms``) if that is later."""
    return max(next(poll for poll in POLLS if poll >= listening_ms), served_ms)


def summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    seen = [buck2_sees_ms(listening, served) for listening, served in samples]
    return {
        "listening_ms_median": statistics.median(listening for listening, _ in samples),
        "ready_ms_median": statistics.median(served for _, served in samples),
        "ready_ms_max": max(served for _, served in samples),
        "buck2_waits_ms_median": statistics.median(seen),
        "buck2_waits_ms_max": max(seen),
        "buck2_done_waiting_by_60_ms": sum(ms <= TARGET_MS for ms in seen) / len(seen),
    }


@contextlib.contextmanager
def busy_cpus() -> Iterator[int]:
    """One process spinning on each CPU while the block runs, as a build's other actions
    keep them busy when Buck2 starts a worker; yields how many. Stopped by pid."""
    count = os.cpu_count() or 1
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield count
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait(60)


def exit_after_sigterm_ms(config: Path, project: Path, env: dict[str, str], busy: bool) -> float:
    """SIGTERM to a front's group (Buck2's end of command), with a 3 s request in flight
    if ``busy``; the time until the front exits."""
    worker = Buck2Worker(
        [str(RUNTIME), "serve", "--config", str(config)], project_root=project, env=env
    )
    outcome: list[object] = []
    thread = None
    try:
        worker.start()
        worker.run("echo", "warm")
        if busy:
            thread = threading.Thread(target=lambda: outcome.append(_run_quietly(worker)))
            thread.start()
            time.sleep(0.3)
        assert worker.proc is not None
        start = time.perf_counter()
        os.killpg(worker.proc.pid, signal.SIGTERM)
        worker.proc.wait(60)
        return (time.perf_counter() - start) * 1000
    finally:
        if thread is not None:
            thread.join(60)
        worker.cleanup()


def _run_quietly(worker: Buck2Worker) -> object:
    try:
        return worker.run("sleep", "3")
    except WorkerRequestError as exc:  # as Buck2 sees a worker that exits mid-request
        return exc


def measure(rounds: int, tmp: Path) -> dict[str, Any]:
    project = tmp / "project"
    project.mkdir()
    config = project / "worker.json"
    config.write_text(
        json.dumps({"command": [sys.executable, str(FAKE_WORKER)], "protocol": "json"})
    )
    env = {**os.environ, "WORKER_RUNTIME_DIR": str(tmp / "daemon")}
    front = ["/bin/sh", str(LAUNCHER), str(RUNTIME), "serve", "--config", str(config)]
    floor_code = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); "
        "s.listen(); c = s.accept()[0]; c.recv(64); c.sendall(bytes(3) + b'\\4' + bytes(5)); "
        "import time; time.sleep(60)"
    )

    def alternated(label: str) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """``rounds`` starts of the front and of the floor, alternated so that both see
        the same machine."""
        fronts, floors = [], []
        for index in range(rounds):
            path = tmp / f"{label}-f{index}.sock"
            env["WORKER_SOCKET"] = str(path)
            fronts.append(ready_after_ms(front, path, env, project))
            path = tmp / f"{label}-p{index}.sock"
            floor = [sys.executable, "-c", floor_code, str(path)]
            floors.append(ready_after_ms(floor, path, env, project))
        del env["WORKER_SOCKET"]
        return fronts, floors

    try:
        env["WORKER_SOCKET"] = str(tmp / "warm-up.sock")
        ready_after_ms(front, tmp / "warm-up.sock", env, project)  # starts the daemon
        fronts, floors = alternated("idle")
        with busy_cpus() as spinning:
            busy_fronts, busy_floors = alternated("busy")
        shutdown_rounds = max(3, rounds // 10)
        in_flight = [
            exit_after_sigterm_ms(config, project, env, True) for _ in range(shutdown_rounds)
        ]
        idle = [exit_after_sigterm_ms(config, project, env, False) for _ in range(shutdown_rounds)]
    finally:
        subprocess.run(
            [str(RUNTIME), "stop", "--project-root", str(project)], env=env, capture_output=True
        )
    front_summary, floor_summary = summary(fronts), summary(floors)
    busy_front, busy_floor = summary(busy_fronts), summary(busy_floors)
    return {
        "rounds": rounds,
        "buck2_polls_ms": POLLS[:5],
        "front": front_summary,
        "floor_bare_interpreter": floor_summary,
        "front_over_floor_ms": front_summary["ready_ms_median"] - floor_summary["ready_ms_median"],
        "target_buck2_waits_ms": TARGET_MS,
        "met": front_summary["buck2_waits_ms_median"] <= TARGET_MS,
        "busy_machine": {
            "spinning_processes": spinning,
            "front": busy_front,
            "floor_bare_interpreter": busy_floor,
            "front_over_floor_ms": busy_front["ready_ms_median"] - busy_floor["ready_ms_median"],
        },
        "exit_after_sigterm_ms_median": {
            "request_in_flight": statistics.median(in_flight),
            "floor_idle_front": statistics.median(idle),
        },
        "buck2_sigkill_after_ms": 10_000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    add_output_argument(parser, "front_start")
    args = parser.parse_args(argv)
    compile_runtime()
    with scratch_dir("wrfs-", parent="/tmp") as tmp:
        result = measure(args.rounds, tmp)
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
