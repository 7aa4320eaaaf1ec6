"""The demo's Java part: the compile actions of examples/java, cold and warm.

The targets and their dependencies are read from examples/java/BUCK (which is also
Python syntax). Every java_library/java_binary compile is one action, run in dependency
order, ``jobs`` at a time: cold as a ``javac-worker @argfile`` process, the worker's
one-shot mode (what Buck2 runs with workers off: toolchains//:javac_worker's fallback, which
reads argfiles by docs/argfiles.md where plain javac would not), warm as a request to ``worker-runtime serve`` for the javac worker, first in
a command that starts the daemon and then in a second command that finds it warm. A
dependent compiles against the class directories of its dependencies and of their
exported dependencies, as the prelude's java_library does with their jars. Everything is
written under the demo's temporary project root.
"""

from __future__ import annotations

import ast
import concurrent.futures
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workers_dev.emulator import Buck2Worker, make_command

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "java"
JAVAC_WORKER = REPO_ROOT / "toolchains" / "java" / "javac-worker"


@dataclass(frozen=True)
class JavaTarget:
    name: str
    srcs: tuple[str, ...]
    deps: tuple[str, ...]
    exported_deps: tuple[str, ...]


@dataclass(frozen=True)
class JavaBuild:
    wall_s: float
    action_median_ms: float
    compile_s: float


def read_targets(buck_file: Path = EXAMPLE / "BUCK") -> dict[str, JavaTarget]:
    targets: dict[str, JavaTarget] = {}
    for node in ast.walk(ast.parse(buck_file.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in ("java_library", "java_binary"):
            continue
        values = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        strip = lambda labels: tuple(label.lstrip(":") for label in labels)  # noqa: E731
        targets[values["name"]] = JavaTarget(
            values["name"],
            tuple(values.get("srcs", ())),
            strip(values.get("deps", ())),
            strip(values.get("exported_deps", ())),
        )
    return targets


def classpath(targets: dict[str, JavaTarget], name: str) -> list[str]:
    """Class directories a target compiles against: its deps and their exported deps."""
    seen: list[str] = []

    def add_exported(dep: str) -> None:
        if dep not in seen:
            seen.append(dep)
            for exported in targets[dep].exported_deps:
                add_exported(exported)

    for dep in targets[name].deps + targets[name].exported_deps:
        add_exported(dep)
    return [f"out/{dep}" for dep in seen]  # relative to the build's project root


def write_argfiles(root: Path, targets: dict[str, JavaTarget]) -> None:
    for name, target in targets.items():
        cp = classpath(targets, name)
        args = ["-d", f"out/{name}", *(["-cp", ":".join(cp)] if cp else []), "--release", "17"]
        args += [str(EXAMPLE / src) for src in target.srcs]
        (root / f"{name}.args").write_text("\n".join(args) + "\n")


def build(
    root: Path, targets: dict[str, JavaTarget], jobs: int, compile_one: Callable[[str], None]
) -> JavaBuild:
    """Compiles every target in dependency order, ``jobs`` at a time."""
    durations: list[float] = []
    lock = threading.Lock()

    def run(name: str) -> None:
        start = time.perf_counter()
        compile_one(name)
        with lock:
            durations.append(time.perf_counter() - start)

    start = time.perf_counter()
    run_in_dependency_order(
        list(targets), lambda n: targets[n].deps + targets[n].exported_deps, jobs, run
    )
    wall = time.perf_counter() - start
    return JavaBuild(wall, statistics.median(durations) * 1000, sum(durations))


def run_in_dependency_order(
    names: list[str],
    deps_of: Callable[[str], tuple[str, ...] | list[str]],
    jobs: int,
    run: Callable[[str], None],
) -> None:
    """Runs ``run(name)`` for every name once all of its deps have run, ``jobs`` at a time
    (as Buck2 schedules actions whose inputs are ready); the first failure propagates."""
    done: set[str] = set()
    pending = set(names)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        running: dict[concurrent.futures.Future[None], str] = {}
        while pending or running:
            ready = [n for n in sorted(pending) if set(deps_of(n)) <= done]
            if not ready and not running:
                raise ValueError(f"dependency cycle or unknown dependency among {sorted(pending)}")
            for name in ready[: jobs - len(running)]:
                pending.discard(name)
                running[pool.submit(run, name)] = name
            finished, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished:
                future.result()
                done.add(running.pop(future))


def cold_java(root: Path, targets: dict[str, JavaTarget], jobs: int) -> JavaBuild:
    def compile_one(name: str) -> None:
        command = [str(JAVAC_WORKER), f"@{name}.args"]
        subprocess.run(command, cwd=root, check=True, capture_output=True)

    return build(root, targets, jobs, compile_one)


def warm_java(root: Path, targets: dict[str, JavaTarget], jobs: int) -> JavaBuild:
    """One Buck2 command: a front for the javac worker, the project's daemon behind it."""
    config = root / "javac_worker.json"
    config.write_text(
        json.dumps({"command": [str(JAVAC_WORKER)], "multiplex": True, "cancellable": True})
    )
    exe = [sys.executable, "-m", "worker_runtime", "serve", "--config", str(config)]
    with Buck2Worker(exe, project_root=root) as worker:

        def compile_one(name: str) -> None:
            response = worker.execute(make_command([f"@{name}.args"]))
            if response.exit_code != 0:
                raise RuntimeError(f"javac {name} failed: {response.stderr}")

        return build(root, targets, jobs, compile_one)


__all__ = ["JavaBuild", "JavaTarget", "cold_java", "read_targets", "warm_java", "write_argfiles"]
