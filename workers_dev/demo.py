"""``worker-runtime demo``: builds the example cold and warm, as Buck2 would, and prints the savings.

Cold is what Buck2 does when workers are off: one process per action running the
fallback command (``tool @argfile``). Warm is what it does with workers on: one
``worker-runtime serve`` per command, each action sent to it over gRPC and served by a
warm backend. The warm build runs as two Buck2 commands: the first starts the
project's daemon and its backends, the second finds them warm. All run ``--jobs`` actions at a time (Buck2's ``-j``, the CPU count by
default) and must write byte-identical outputs.

Then examples/java and examples/haskell, built from the prelude's own analysis (the build
runner: every target analysed with the fake Buck2 API, its actions run as Buck2 runs
them), cold and in two warm commands (demo_examples.py). With ``--remote``, examples/java
again on the embedded engine, remote one-shot against warm remote workers
(demo_remote.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from worker_runtime.daemon.commands import private_daemon_dir
from workers_dev.demo_examples import HASKELL, JAVA, ExampleBuild, build_three_times
from workers_dev.demo_remote import EngineUnavailable, print_remote_java, remote_java_builds
from workers_dev.emulator import Buck2Worker, make_command

EXAMPLE_WORKER = (
    Path(__file__).resolve().parent.parent / "examples" / "text_stats" / "text_stats_worker.py"
)
WARM_MODES = ("warm1", "warm2")
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "worker",
    "buck",
    "warm",
    "cold",
    "build",
    "action",
    "request",
    "compile",
]


@dataclass(frozen=True)
class PhaseResult:
    name: str
    wall_s: float
    per_action_median_ms: float
    actions: int


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def step(self) -> None:
        self.done += 1
        if self.tty:
            filled = int(30 * self.done / self.total)
            bar = "#" * filled + "." * (30 - filled)
            sys.stderr.write(f"\r  {self.label:<28} [{bar}] {self.done}/{self.total}")
            if self.done == self.total:
                sys.stderr.write(f"  {time.monotonic() - self.started:.2f} s\n")
            sys.stderr.flush()
        elif self.done == self.total:
            sys.stderr.write(
                f"  {self.label:<28} {self.total} actions in {time.monotonic() - self.started:.2f} s\n"
            )


def make_project(root: Path, actions: int) -> None:
    rng = random.Random(42)
    (root / "src").mkdir(parents=True)
    (root / "args").mkdir()
    for mode in ("cold", *WARM_MODES):
        (root / "out" / mode).mkdir(parents=True)
    for index in range(actions):
        lines = (" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200))
        (root / "src" / f"{index}.txt").write_text("\n".join(lines) + "\n")
        for mode in ("cold", *WARM_MODES):
            (root / "args" / f"{mode}-{index}.args").write_text(
                f"--out\nout/{mode}/{index}.json\nsrc/{index}.txt\n"
            )


def run_actions(
    label: str, actions: int, jobs: int, action: Callable[[int], None]
) -> tuple[float, list[float]]:
    progress = Progress(label, actions)
    durations: list[float] = []

    def timed(index: int) -> None:
        start = time.perf_counter()
        action(index)
        durations.append(time.perf_counter() - start)
        progress.step()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(timed, range(actions)))
    return time.perf_counter() - start, durations


def cold_build(root: Path, actions: int, jobs: int) -> PhaseResult:
    def action(index: int) -> None:
        result = subprocess.run(
            [sys.executable, str(EXAMPLE_WORKER), f"@args/cold-{index}.args"],
            cwd=root,
            capture_output=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"cold action {index} failed: {result.stderr.decode()}")

    wall, durations = run_actions("cold (process per action)", actions, jobs, action)
    return PhaseResult("cold", wall, statistics.median(durations) * 1000, actions)


def warm_build(root: Path, actions: int, jobs: int, mode: str, label: str) -> PhaseResult:
    """One Buck2 command with workers on: its own front, the project's daemon behind it."""
    exe = [
        sys.executable, "-m", "worker_runtime", "serve", "--protocol", "json",
        "--max-instances", str(jobs), "--", sys.executable, str(EXAMPLE_WORKER),
    ]  # fmt: skip
    start = time.perf_counter()
    with Buck2Worker(exe, project_root=root) as worker:

        def action(index: int) -> None:
            response = worker.execute(make_command([f"@args/{mode}-{index}.args"]))
            if response.exit_code != 0:
                raise RuntimeError(f"{mode} action {index} failed: {response.stderr}")

        _, durations = run_actions(label, actions, jobs, action)
        wall = time.perf_counter() - start  # includes starting the front (and daemon, backends)
    return PhaseResult(mode, wall, statistics.median(durations) * 1000, actions)


def java_builds(root: Path, jobs: int) -> dict[str, ExampleBuild]:
    """examples/java from the prelude's analysis: one javac action per target."""
    print(
        f"Building examples/java from the prelude's analysis, {jobs} targets at a time:",
        file=sys.stderr,
    )
    return build_three_times(JAVA, root, jobs)


def haskell_builds(root: Path, jobs: int) -> dict[str, ExampleBuild]:
    """examples/haskell from the prelude's analysis: one ghc action per module."""
    print(
        f"Building examples/haskell from the prelude's analysis, {jobs} targets at a time:",
        file=sys.stderr,
    )
    return build_three_times(HASKELL, root, jobs)


def print_builds(
    title: str, labels: tuple[str, str, str], unit: str, tool: str, builds: dict[str, ExampleBuild]
) -> None:
    print()
    print(f"{title:<40} {'build wall time':>16} {f'per {unit} (median)':>20}")
    for label, mode in zip(labels, ("cold", "warm1", "warm2"), strict=True):
        phase = builds[mode]
        print(f"{label:<40} {phase.wall_s:>14.2f} s {phase.action_median_ms:>17.2f} ms")
    cold, warm = builds["cold"], builds["warm2"]
    print(
        f"\nThe warm {tool} compiled the example {cold.wall_s / warm.wall_s:.1f}x faster "
        f"({cold.action_median_ms / warm.action_median_ms:.1f}x per {unit}) in the 2nd command."
    )


def print_java(java: dict[str, ExampleBuild]) -> None:
    labels = (
        "cold: a javac-worker process per target",
        "1st command: starts the JVM",
        "2nd command: warm javac worker",
    )
    print_builds(
        f"examples/java ({java['cold'].actions} compile actions)",
        labels,
        "action",
        "javac worker",
        java,
    )


def print_haskell(haskell: dict[str, ExampleBuild]) -> None:
    labels = (
        "cold: a ghc process per module",
        "1st command: starts GHC sessions",
        "2nd command: warm GHC worker",
    )
    print_builds(
        f"examples/haskell ({haskell['cold'].actions} module compiles)",
        labels,
        "module",
        "GHC worker",
        haskell,
    )


def same_outputs(root: Path, actions: int) -> bool:
    return all(
        (root / "out" / "cold" / f"{i}.json").read_bytes()
        == (root / "out" / mode / f"{i}.json").read_bytes()
        for mode in WARM_MODES
        for i in range(actions)
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="worker-runtime demo", description=__doc__)
    parser.add_argument("--actions", type=int, default=120, help="actions to build (default: 120)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 2, help="actions at a time (default: CPUs)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument(
        "--no-java", action="store_true", help="skip the Java example (default: run it)"
    )
    parser.add_argument(
        "--no-haskell", action="store_true", help="skip the Haskell example (default: run it)"
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="also build examples/java remotely on the embedded engine (BuildGrid and our "
        "executor, started and stopped by the demo): remote one-shot vs warm remote workers",
    )
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="worker-runtime-demo-"))
    # A daemon of its own, stopped at the end: the demo leaves nothing running.
    with contextlib.ExitStack() as cleanup, private_daemon_dir("wrd-"):
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        make_project(root, args.actions)
        print(
            f"Building {args.actions} text_stats actions, {args.jobs} at a time, as Buck2 would:",
            file=sys.stderr,
        )
        cold = cold_build(root, args.actions, args.jobs)
        first = warm_build(root, args.actions, args.jobs, "warm1", "workers, 1st buck2 command")
        second = warm_build(root, args.actions, args.jobs, "warm2", "workers, 2nd buck2 command")
        identical = same_outputs(root, args.actions)
        java = None if args.no_java else java_builds(root / "java", args.jobs)
        haskell = None if args.no_haskell else haskell_builds(root / "haskell", args.jobs)
        remote = None
        if args.remote:
            try:
                remote = remote_java_builds(root / "remote", args.jobs)
            except EngineUnavailable as exc:
                print(
                    f"worker-runtime demo --remote: the engine did not start: {exc}\n"
                    "scripts/bootstrap.sh installs BuildGrid and PostgreSQL.",
                    file=sys.stderr,
                )
                return 2

    rows = [
        ("cold: one process per action", cold),
        ("1st command: starts daemon + backends", first),
        ("2nd command: warm daemon", second),
    ]
    warm = second
    print()
    print(f"{'text_stats example':<40} {'build wall time':>16} {'per action (median)':>20}")
    for label, phase in rows:
        print(f"{label:<40} {phase.wall_s:>14.2f} s {phase.per_action_median_ms:>17.2f} ms")
    speedup = cold.wall_s / warm.wall_s
    per_action = cold.per_action_median_ms / warm.per_action_median_ms
    print(
        f"\nWarm workers saved {cold.wall_s - warm.wall_s:.2f} s on the 2nd command: the build was "
        f"{speedup:.1f}x faster ({per_action:.0f}x per action); the 1st command was "
        f"{cold.wall_s / first.wall_s:.1f}x faster, starting the daemon and backends included."
    )
    print(f"Outputs identical to the cold build: {'yes' if identical else 'NO'}")
    if java is not None:
        print_java(java)
    if haskell is not None:
        print_haskell(haskell)
    if remote is not None:
        print_remote_java(remote, java["warm2"] if java else None)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "cold": asdict(cold),
                    "warm_first_command": asdict(first),
                    "warm": asdict(warm),
                    "speedup": speedup,
                    "java": {k: asdict(v) for k, v in java.items()} if java else None,
                    "haskell": {k: asdict(v) for k, v in haskell.items()} if haskell else None,
                    "remote_java": ({k: asdict(v) for k, v in remote.items()} if remote else None),
                    "identical": identical,
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if identical else 1
