"""Builds a package of the repository the way Buck2 would, from the prelude's own analysis.

Each target of a BUCK file is analysed with the fake Buck2 API (``buck2_fake``) in
dependency order; its actions are then executed as Buck2 executes them: write actions
write files, ``symlinked_dir`` makes a directory of links, and ``run`` actions run either
on the worker (an ``ExecuteCommand`` with the action's arguments and env, sent to a
``worker-runtime serve`` launched from the worker_tool's config, as Buck2 sends it) or as
the fallback process (``WorkerRunInfo.exe + arguments``), at most ``jobs`` targets at a
time. Used by the Java tests and the Java example benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.starlark.buck2_fake import REPO_ROOT, Analysis, Buck2Fake, starlark_literal
from worker_runtime.buck2.emulator import Buck2Worker, make_command
from worker_runtime.demo_java import run_in_dependency_order

RUNTIME = [sys.executable, "-m", "worker_runtime", "serve"]
PRELUDE_JAVA = {
    "@prelude//:prelude.bzl": ["JavaLibraryInfo", "JavaToolchainInfo", "WorkerToolInfo"]
}


def artifact_list(plain: list[dict[str, str]]) -> str:
    return "[" + ", ".join(f"fake_artifact({json.dumps(a['artifact'])})" for a in plain) + "]"


def java_library_dep(info: dict[str, Any]) -> str:
    return (
        "fake_dep_of({JavaLibraryInfo: JavaLibraryInfo("
        f"output_jar = fake_artifact({json.dumps(info['output_jar']['artifact'])}), "
        f"compile_jars = {artifact_list(info['compile_jars'])}, "
        f"runtime_jars = {artifact_list(info['runtime_jars'])})}})"
    )


def java_toolchain_dep(worker_exe: list[str]) -> str:
    return (
        "fake_dep_of({JavaToolchainInfo: JavaToolchainInfo("
        f"compiler = WorkerToolInfo(worker = WorkerInfo(exe = cmd_args({json.dumps(worker_exe)})), "
        'fallback = RunInfo(args = cmd_args("javac")), config = "unused"), '
        'jar = RunInfo(args = cmd_args("jar")), java = RunInfo(args = cmd_args("java")), release = "17")})'
    )


def javac_worker_config() -> dict[str, Any]:
    """The runtime config that toolchains//:javac_worker's worker_tool writes."""
    fake = Buck2Fake()
    fake.eval_file(REPO_ROOT / "toolchains" / "BUCK", "toolchains")
    attrs = fake.target_attrs["javac_worker"]
    given = {k: starlark_literal(v) for k, v in attrs.items() if k in ("multiplex", "cancellable")}
    given["tool_inputs"] = starlark_literal([f"toolchains/{p}" for p in attrs["tool_inputs"]])
    given["backend"] = 'fake_dep(RunInfo(args = cmd_args("toolchains/java/javac-worker")))'
    given["fallback"] = 'fake_dep(RunInfo(args = cmd_args("javac")))'
    analysis = Buck2Fake().analyse(
        "@prelude//worker:worker_tool.bzl", "worker_tool", "//toolchains:javac_worker", given,
        {"toolchains//:worker_runtime": 'fake_dep(RunInfo(args = cmd_args("worker-runtime")))'},
    )  # fmt: skip
    config: dict[str, Any] = json.loads(analysis.action("write_json")["content"])
    return config


@dataclass
class BuildResult:
    """What one build did: the analysis of each target and the times of its actions."""

    analyses: dict[str, Analysis] = field(default_factory=dict)
    #: (category, seconds) of every run action, in completion order.
    action_seconds: list[tuple[str, float]] = field(default_factory=list)

    def seconds(self, category: str) -> float:
        return sum(s for c, s in self.action_seconds if c == category)


@contextmanager
def javac_worker(
    project: Path, config: dict[str, Any], extra_flags: list[str]
) -> Iterator[Buck2Worker]:
    """One Buck2 command's javac worker: `worker-runtime serve --config <config>`."""
    path = project / "buck-out" / "javac_worker.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    worker = Buck2Worker([*RUNTIME, *extra_flags, "--config", str(path)], project_root=project)
    with worker:
        yield worker


def make_project(tmp: Path) -> Path:
    """A project root whose examples/ and toolchains/ are the repository's (read only)."""
    project = tmp / "project"
    project.mkdir()
    for name in ("examples", "toolchains"):
        (project / name).symlink_to(REPO_ROOT / name)
    return project


def build_java_package(
    project: Path,
    package: str,
    *,
    worker: Buck2Worker | None,
    jobs: int = 2,
) -> BuildResult:
    """Builds every target of ``package`` (e.g. ``examples/java``) in dependency order."""
    fake = Buck2Fake()
    fake.eval_file(REPO_ROOT / package / "BUCK", "root")
    targets = dict(fake.target_attrs)
    toolchain = java_toolchain_dep(["worker-runtime", "serve"])
    result = BuildResult()
    done: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def deps_of(name: str) -> list[str]:
        attrs = targets[name]
        return [d.lstrip(":") for d in attrs.get("deps", []) + attrs.get("exported_deps", [])]

    def build(name: str) -> None:
        attrs = targets[name]
        rule = "java_binary" if "main_class" in attrs else "java_library"
        given = {"srcs": json.dumps([f"{package}/{s}" for s in attrs.get("srcs", [])])}
        for key in ("deps", "exported_deps"):
            if key in attrs:
                given[key] = json.dumps(attrs[key])
        if "main_class" in attrs:
            given["main_class"] = json.dumps(attrs["main_class"])
        with lock:
            known = {f":{dep}": java_library_dep(done[dep]) for dep in deps_of(name)}
        known["toolchains//:java"] = toolchain
        analysis = Buck2Fake().analyse(
            f"@prelude//java:{rule}.bzl", rule, f"//{package}:{name}", given, known, PRELUDE_JAVA
        )
        for action in analysis.actions:
            run_action(project, action, worker, result)
        with lock:
            result.analyses[name] = analysis
            providers = [p for p in analysis.providers if p["_provider"] == "JavaLibraryInfo"]
            done[name] = providers[0] if providers else {}

    run_in_dependency_order(list(targets), deps_of, jobs, build)
    return result


def run_action(
    project: Path, action: dict[str, Any], worker: Buck2Worker | None, result: BuildResult
) -> None:
    kind = action["kind"]
    if kind in ("write", "write_json"):
        target = project / action["output"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(action["content"])
        if action["output"].endswith(".sh"):
            target.chmod(0o755)
        return
    if kind == "symlinked_dir":
        directory = project / action["output"]
        for name, source in action["srcs"].items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).symlink_to(project / source)
        return
    for output in action["outputs"]:
        (project / output).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if "worker" in action and worker is not None:
        response = worker.execute(make_command(action["arguments"], env=action["env"]))
        if response.exit_code != 0:
            raise RuntimeError(f"worker action {action['category']} failed: {response.stderr}")
    else:
        command = [*action.get("fallback", []), *action["arguments"]]
        env = dict(os.environ, **action["env"])
        completed = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"action {action['category']} failed: {completed.stderr}")
    result.action_seconds.append((action["category"], time.perf_counter() - start))
