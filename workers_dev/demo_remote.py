"""The demo's remote part (``worker-runtime demo --remote``): examples/java built remotely
on the embedded engine (`worker-runtime cluster up`: BuildGrid and one of our executors,
in a directory of its own, brought down at the end), from the prelude's own analysis as
the local parts are. Remote one-shot (every compile a plain ``javac`` action on the
executor) against warm remote workers (the javac worker, kept warm on the executor), the
action cache off on both so that every compile runs.

The requests go through worker-runtime with routing ``remote`` (the runtime forwards
them), since the demo runs where there is no Buck2; Buck2's own way (routing native) is
measured with the real Buck2 by ``benchmarks/native_remote.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from workers_dev.build_runner import javac_worker, javac_worker_config, make_project
from workers_dev.demo_examples import JAVA, ExampleBuild, measure

RUNTIME = [sys.executable, "-m", "worker_runtime"]
#: Untimed builds first on the warm side: the executor starts its javac worker, and the
#: JVM warms up.
WARM_UP_BUILDS = 2


class EngineUnavailable(RuntimeError):
    """The embedded engine could not start here (no BuildGrid, no PostgreSQL)."""


def cluster(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNTIME, "cluster", *args, "--dir", str(directory)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def remote_config(engine: Path, persistent: bool) -> dict[str, Any]:
    base = javac_worker_config() if persistent else {"command": ["javac"]}
    remote = {
        "endpoint": f"unix://{engine}/run/buildgrid.sock",
        "instance_name": "main",
        "cache": False,
        "persistent": persistent,
    }
    return {**base, "routing": "remote", "daemon": False, "remote": remote}


def remote_java_builds(root: Path, jobs: int) -> dict[str, ExampleBuild]:
    """{"oneshot": ..., "warm": ...}: examples/java, every compile run on the engine."""
    print("Building examples/java remotely on the embedded engine:", file=sys.stderr)
    engine = Path(tempfile.mkdtemp(prefix="wr-demo-engine-", dir="/tmp"))
    engine.chmod(0o755)  # as root, PostgreSQL runs as its own user
    try:
        up = cluster(engine, "up", "--executors", "1")
        if up.returncode != 0:
            raise EngineUnavailable(up.stderr.strip() or up.stdout.strip())
        results: dict[str, ExampleBuild] = {}
        for side, persistent, warm_up in (("oneshot", False, 0), ("warm", True, WARM_UP_BUILDS)):
            (root / side).mkdir(parents=True)
            project = make_project(root / side)
            with javac_worker(project, remote_config(engine, persistent), []) as worker:
                for _ in range(warm_up + 1):
                    shutil.rmtree(project / "buck-out" / "v2", ignore_errors=True)
                    results[side] = measure(JAVA, project, worker, jobs)
            sys.stderr.write(f"  remote {side:<21} {results[side].wall_s:.2f} s\n")
        return results
    finally:
        cluster(engine, "down")
        shutil.rmtree(engine, ignore_errors=True)


def print_remote_java(builds: dict[str, ExampleBuild], local: ExampleBuild | None) -> None:
    oneshot, warm = builds["oneshot"], builds["warm"]
    print()
    print(
        f"{'examples/java, remote (embedded engine)':<40} {'build wall time':>16} "
        f"{'per action (median)':>20}"
    )
    rows = [("remote one-shot: javac per action", oneshot), ("warm remote javac worker", warm)]
    if local is not None:
        rows.append(("(local, 2nd command: warm worker)", local))
    for label, phase in rows:
        print(f"{label:<40} {phase.wall_s:>14.2f} s {phase.action_median_ms:>17.2f} ms")
    print(
        f"\nWarm remote workers compiled the example {oneshot.compile_s / warm.compile_s:.1f}x "
        f"faster than remote one-shot javac (sum of the compile actions; "
        f"{oneshot.wall_s / warm.wall_s:.1f}x whole build); the engine's round trip is what "
        f"the local warm worker does not pay."
    )
