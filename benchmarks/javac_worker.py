"""Benchmark: one javac action, cold (a javac process, as Buck2 runs it without workers) vs.
warm (the same compile sent through worker-runtime to a warm javac worker), for a 1-class
and a 10-class target. Writes benchmarks/results/javac_worker.json.

Run: ``.venv/bin/python -m benchmarks.javac_worker``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.results import add_output_argument, emit
from benchmarks.scratch import scratch_dir
from workers_dev.emulator import Buck2Worker, make_command

ROOT = Path(__file__).resolve().parent.parent
JAVAC_WORKER = str(ROOT / "toolchains" / "java" / "javac-worker")
TARGET_RATIO = 10.0


def write_target(root: Path, name: str, classes: int) -> list[str]:
    paths = []
    for i in range(classes):
        body = "return 1;" if i == 0 else f"return C{i - 1}.value() + {i};"
        path = root / name / f"C{i}.java"
        path.parent.mkdir(parents=True, exist_ok=True)
        methods = "\n".join(
            f'  public String m{j}(int x) {{ return "v" + (x * {j}); }}' for j in range(12)
        )
        path.write_text(
            f"package {name};\npublic class C{i} {{\n  public static int value() {{ {body} }}\n{methods}\n}}\n"
        )
        paths.append(str(path.relative_to(root)))
    return paths


def cold(root: Path, sources: list[str], runs: int) -> list[float]:
    samples = []
    for i in range(runs):
        start = time.perf_counter()
        subprocess.run(["javac", "-d", f"cold{i}", *sources], cwd=root, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def warm(worker: Buck2Worker, sources: list[str], warmup: int, runs: int, tag: str) -> list[float]:
    samples = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        response = worker.execute(make_command(["-d", f"warm_{tag}{i}", *sources]))
        elapsed = (time.perf_counter() - start) * 1000
        if response.exit_code != 0:
            raise RuntimeError(response.stderr)
        if i >= warmup:
            samples.append(elapsed)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold-runs", type=int, default=8)
    parser.add_argument("--warm-runs", type=int, default=20)
    parser.add_argument(
        "--warmup", type=int, default=40, help="compiles before measuring (JIT warm-up)"
    )
    add_output_argument(parser, "javac_worker")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"target_ratio": TARGET_RATIO}
    with scratch_dir("javac-bench-") as root:
        targets = {
            "one_class": write_target(root, "one", 1),
            "ten_classes": write_target(root, "ten", 10),
        }
        runtime = [
            sys.executable,
            "-m",
            "worker_runtime",
            "serve",
            "--no-daemon",
            "--",
            JAVAC_WORKER,
        ]
        with Buck2Worker(runtime, project_root=root) as worker:
            for name, sources in targets.items():
                warm_ms = statistics.median(
                    warm(worker, sources, args.warmup, args.warm_runs, name)
                )
                cold_ms = statistics.median(cold(root, sources, args.cold_runs))
                result[name] = {"cold_ms": cold_ms, "warm_ms": warm_ms, "ratio": cold_ms / warm_ms}
    result["met"] = all(result[n]["ratio"] >= TARGET_RATIO for n in ("one_class", "ten_classes"))
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
