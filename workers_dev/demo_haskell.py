"""The demo's Haskell part: the per-module compile actions of examples/haskell, cold and warm.

The targets are read from examples/haskell/BUCK (which is also Python syntax). Every module
is one action, as the prelude's haskell_library registers it: `ghc -c` with explicit
outputs, the target's own interface folder and its deps' on the search path; within a
target in the order its import scan (toolchains/haskell/scan_imports.py) gives, targets in
dependency order, ``jobs`` targets at a time. Cold, each
action is a ghc process (the fallback); warm, a request to ``worker-runtime serve`` for the
GHC worker, with an envelope naming its inputs (so the worker can validate and reuse the
interfaces it holds), first in a command that starts the daemon and its GHC sessions, then
in a second command that finds them warm. Everything is written under the demo's project.
"""

from __future__ import annotations

import ast
import graphlib
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workers_dev.demo_java import JavaBuild, run_in_dependency_order
from workers_dev.emulator import Buck2Worker, make_command

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "haskell"
GHC_WORKER = REPO_ROOT / "toolchains" / "haskell" / "ghc-worker"
GHC_ARGFILE = REPO_ROOT / "toolchains" / "haskell" / "ghc-argfile"
SCANNER = REPO_ROOT / "toolchains" / "haskell" / "scan_imports.py"

#: The same shape as the Java results: wall time, median per action, summed action time.
HaskellBuild = JavaBuild


@dataclass(frozen=True)
class HaskellTarget:
    name: str
    srcs: tuple[str, ...]
    deps: tuple[str, ...]
    packages: tuple[str, ...]


def read_targets(buck_file: Path = EXAMPLE / "BUCK") -> dict[str, HaskellTarget]:
    targets: dict[str, HaskellTarget] = {}
    for node in ast.walk(ast.parse(buck_file.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in ("haskell_library", "haskell_binary"):
            continue
        values = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        targets[values["name"]] = HaskellTarget(
            values["name"],
            tuple(values.get("srcs", ())),
            tuple(d.lstrip(":") for d in values.get("deps", ())),
            tuple(values.get("packages", ())),
        )
    return targets


def transitive_deps(targets: dict[str, HaskellTarget], name: str) -> list[str]:
    seen: list[str] = []
    for dep in targets[name].deps:
        for found in [dep, *transitive_deps(targets, dep)]:
            if found not in seen:
                seen.append(found)
    return seen


def module_imports(root: Path, name: str, target: HaskellTarget) -> dict[str, list[str]]:
    """Which modules of the target each one imports, from the toolchain's scanner."""
    out = root / f"{name}.imports.json"
    modules = [f"{src[: -len('.hs')].replace('/', '.')}={EXAMPLE / src}" for src in target.srcs]
    subprocess.run([sys.executable, str(SCANNER), str(out), *modules], check=True)
    graph: dict[str, list[str]] = json.loads(out.read_text())
    return graph


def write_actions(root: Path, targets: dict[str, HaskellTarget]) -> dict[str, list[str]]:
    """Writes each module's @argfile and envelope; returns the action ids per target,
    each module after those it imports."""
    actions: dict[str, list[str]] = {}
    for name, target in targets.items():
        imports = module_imports(root, name, target)
        ordered = list(graphlib.TopologicalSorter(imports).static_order())
        deps = transitive_deps(targets, name)
        packages = sorted({p for t in [name, *deps] for p in targets[t].packages})
        dep_ifaces = [
            f"out/{dep}/ifaces/{src[:-3]}.hi" for dep in deps for src in targets[dep].srcs
        ]
        actions[name] = []
        for module in ordered:
            path = module.replace(".", "/")
            src = f"{path}.hs"
            action = f"{name}-{module}"
            own = [f"out/{name}/ifaces/{m.replace('.', '/')}.hi" for m in closure(imports, module)]
            args = ["-c", str(EXAMPLE / src), "-o", f"out/{name}/objs/{path}.o"]
            args += ["-ohi", f"out/{name}/ifaces/{path}.hi", "-i"]
            args += [f"-iout/{t}/ifaces" for t in ([name] if own else []) + deps]
            for package in packages:
                args += ["-package", package]
            (root / f"{action}.args").write_text("\n".join(args) + "\n")
            envelope = {
                "argfile": f"{action}.args",
                "inputs": [str(EXAMPLE / src), *own, *dep_ifaces],
                "outputs": [f"out/{name}/objs/{path}.o", f"out/{name}/ifaces/{path}.hi"],
                "version": 1,
            }
            (root / f"{action}.envelope.json").write_text(json.dumps(envelope))
            for kind in ("objs", "ifaces"):
                (root / "out" / name / kind / path).parent.mkdir(parents=True, exist_ok=True)
            actions[name].append(action)
    return actions


def closure(imports: dict[str, list[str]], module: str) -> list[str]:
    """The modules of the target that ``module`` imports, directly or not."""
    seen: set[str] = set()
    todo = list(imports[module])
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(imports[dep])
    return sorted(seen)


def build(
    targets: dict[str, HaskellTarget],
    actions: dict[str, list[str]],
    jobs: int,
    compile_one: Callable[[str], None],
) -> HaskellBuild:
    """Every module in order (import order in a target, targets in dependency order)."""
    durations: list[float] = []
    lock = threading.Lock()

    def run_target(name: str) -> None:
        for action in actions[name]:
            start = time.perf_counter()
            compile_one(action)
            with lock:
                durations.append(time.perf_counter() - start)

    start = time.perf_counter()
    run_in_dependency_order(list(targets), lambda n: targets[n].deps, jobs, run_target)
    wall = time.perf_counter() - start
    return HaskellBuild(wall, statistics.median(durations) * 1000, sum(durations))


def cold_haskell(root: Path, targets: dict[str, HaskellTarget], jobs: int) -> HaskellBuild:
    actions = write_actions(root, targets)

    def compile_one(action: str) -> None:
        done = subprocess.run(
            [str(GHC_ARGFILE), f"@{action}.args"], cwd=root, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"ghc {action} failed: {done.stderr}")

    return build(targets, actions, jobs, compile_one)


def warm_haskell(root: Path, targets: dict[str, HaskellTarget], jobs: int) -> HaskellBuild:
    """One Buck2 command: a front for the GHC worker, the project's daemon behind it."""
    actions = write_actions(root, targets)
    config = root / "ghc_worker.json"
    config.write_text(json.dumps({"command": [str(GHC_WORKER)]}))
    exe = [sys.executable, "-m", "worker_runtime", "serve", "--config", str(config)]
    with Buck2Worker(exe, project_root=root) as worker:

        def compile_one(action: str) -> None:
            env = {"WORKER_RUNTIME_ENVELOPE": f"{action}.envelope.json"}
            response = worker.execute(make_command([f"@{action}.args"], env=env))
            if response.exit_code != 0:
                raise RuntimeError(f"ghc {action} failed: {response.stderr}")

        return build(targets, actions, jobs, compile_one)


__all__ = ["HaskellBuild", "cold_haskell", "read_targets", "warm_haskell"]
