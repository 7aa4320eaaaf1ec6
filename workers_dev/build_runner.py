"""Builds a package of the repository the way Buck2 would, from the prelude's own analysis.

Each target of a BUCK file is analysed with the fake Buck2 API (``buck2_fake``) in
dependency order; its actions are then executed as Buck2 executes them: write actions
write files, ``symlinked_dir`` makes a directory of links, and ``run`` actions run either
on the worker (an ``ExecuteCommand`` with the action's arguments and env, sent to a
``worker-runtime serve`` launched from the worker_tool's config, as Buck2 sends it) or as
the fallback process (``WorkerRunInfo.exe + arguments``), at most ``jobs`` targets at a
time. Used by the Java and Haskell tests, the example benchmarks and the demo.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers_dev.buck2_fake import (
    REPO_ROOT,
    AnalysedDep,
    Analysis,
    Buck2Fake,
    starlark_literal,
)
from workers_dev.emulator import Buck2Worker, make_command

RUNTIME = [sys.executable, "-m", "worker_runtime", "serve"]
PRELUDE_JAVA = {
    "@prelude//:prelude.bzl": ["JavaLibraryInfo", "JavaToolchainInfo", "WorkerToolInfo"]
}
PRELUDE_HASKELL = {
    "@prelude//:prelude.bzl": ["HaskellLibraryInfo", "HaskellToolchainInfo", "WorkerToolInfo"]
}


WORKER_SETTINGS = "//toolchains:worker_settings"
RUNTIME_TARGET = 'fake_dep(RunInfo(args = cmd_args("worker-runtime")))'


def worker_settings(fake: Buck2Fake) -> AnalysedDep:
    """toolchains//:worker_settings analysed by ``fake`` (with the fake's root config), as
    the dependency every worker_tool and the execution platform have."""
    fake.analyse("@prelude//worker:worker_settings.bzl", "worker_settings", WORKER_SETTINGS, {})
    return fake.dep(WORKER_SETTINGS)


def worker_tool_targets(
    fake: Buck2Fake, runtime: str = RUNTIME_TARGET
) -> dict[str, str | AnalysedDep]:
    """The targets a worker_tool's default attributes name: the runtime and the settings."""
    return {
        "toolchains//:worker_runtime": runtime,
        "toolchains//:worker_settings": worker_settings(fake),
    }


def java_toolchain_dep(worker_exe: list[str]) -> str:
    return (
        "fake_dep_of({JavaToolchainInfo: JavaToolchainInfo("
        f"compiler = WorkerToolInfo(worker = WorkerInfo(exe = cmd_args({json.dumps(worker_exe)})), "
        # The fallback of toolchains//:javac_worker: the worker's own one-shot mode.
        'fallback = RunInfo(args = cmd_args("toolchains/java/javac-worker")), config = "unused"), '
        'jar = RunInfo(args = cmd_args("jar")), java = RunInfo(args = cmd_args("java")), release = "17")})'
    )


def worker_tool_config(name: str) -> dict[str, Any]:
    """The runtime config that the worker_tool toolchains//:<name> writes (its backend and
    fallback are host_commands of toolchains/BUCK, resolved here by hand)."""
    fake = Buck2Fake()
    fake.eval_file(REPO_ROOT / "toolchains" / "BUCK", "toolchains")
    attrs = fake.target_attrs[name]
    given = {k: starlark_literal(v) for k, v in attrs.items() if k in ("multiplex", "cancellable")}
    given["tool_inputs"] = starlark_literal(attrs["tool_inputs"])
    for role in ("backend", "fallback"):
        host = fake.target_attrs[attrs[role].lstrip(":")]
        script = [f"toolchains/{host['script']}"] if "script" in host else []
        command = host.get("command", []) + script
        given[role] = f"fake_dep(RunInfo(args = cmd_args({json.dumps(command)})))"
    tool_fake = Buck2Fake()
    analysis = tool_fake.analyse(
        "@prelude//worker:worker_tool.bzl", "worker_tool", f"//toolchains:{name}", given,
        worker_tool_targets(tool_fake),
        constraints=[],  # an exec dep: configured for the execution platform
    )  # fmt: skip
    config: dict[str, Any] = json.loads(analysis.action("write_json")["content"])
    return config


def javac_worker_config() -> dict[str, Any]:
    """The runtime config that toolchains//:javac_worker's worker_tool writes."""
    return worker_tool_config("javac_worker")


def ghc_worker_config() -> dict[str, Any]:
    """The runtime config that toolchains//:ghc_worker's worker_tool writes."""
    return worker_tool_config("ghc_worker")


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
    project: Path, config: dict[str, Any], extra_flags: list[str], name: str = "javac_worker"
) -> Iterator[Buck2Worker]:
    """One Buck2 command's worker: `worker-runtime serve --config <config>`."""
    path = project / "buck-out" / f"{name}.json"
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


@dataclass(frozen=True)
class Language:
    """How the build runner analyses one language's targets."""

    prelude: dict[str, list[str]]
    toolchain_label: str
    toolchain: str
    rule_of: Callable[[dict[str, Any]], str]
    passed_attrs: tuple[str, ...]


def haskell_toolchain_dep(
    worker_exe: list[str],
    package_dbs: list[str] | None = None,
    compiler_flags: list[str] | None = None,
) -> str:
    def starlark(value: list[str] | None) -> str:
        return "None" if value is None else json.dumps(value)

    return (
        "fake_dep_of({HaskellToolchainInfo: HaskellToolchainInfo("
        f"compiler = WorkerToolInfo(worker = WorkerInfo(exe = cmd_args({json.dumps(worker_exe)})), "
        'fallback = RunInfo(args = cmd_args("toolchains/haskell/ghc-argfile")), config = "unused"), '
        'archiver = RunInfo(args = cmd_args("ar")), linker = RunInfo(args = cmd_args("ghc")), '
        f"package_dbs = {starlark(package_dbs)}, compiler_flags = {starlark(compiler_flags)}, "
        'scanner = RunInfo(args = cmd_args("python3", "toolchains/haskell/scan_imports.py")))})'
    )


JAVA = Language(
    prelude=PRELUDE_JAVA,
    toolchain_label="toolchains//:java",
    toolchain=java_toolchain_dep(["worker-runtime", "serve"]),
    rule_of=lambda attrs: "java_binary" if "main_class" in attrs else "java_library",
    passed_attrs=("deps", "exported_deps", "main_class"),
)

HASKELL = Language(
    prelude=PRELUDE_HASKELL,
    toolchain_label="toolchains//:haskell",
    toolchain=haskell_toolchain_dep(["worker-runtime", "serve"]),
    rule_of=lambda attrs: attrs["_impl"].strip("_").removesuffix("_impl"),
    passed_attrs=("deps", "packages", "compiler_flags"),
)


def build_java_package(
    project: Path, package: str, *, worker: Buck2Worker | None, jobs: int = 2
) -> BuildResult:
    """Builds every Java target of ``package`` (e.g. ``examples/java``) in dependency order."""
    return build_package(project, package, JAVA, worker=worker, jobs=jobs)


def build_haskell_package(
    project: Path, package: str, *, worker: Buck2Worker | None, jobs: int = 2
) -> BuildResult:
    """Builds every Haskell target of ``package`` (e.g. ``examples/haskell``)."""
    return build_package(project, package, HASKELL, worker=worker, jobs=jobs)


def build_package(
    project: Path,
    package: str,
    language: Language,
    *,
    worker: Buck2Worker | None,
    jobs: int = 2,
) -> BuildResult:
    """Builds every target of ``package`` in dependency order, at most ``jobs`` at a time;
    within a target, actions run in the order the rule registered them.

    One fake analyses every target, one at a time (as Buck2 hands a dependent the frozen
    providers of its dependencies, transitive sets included); the actions of up to
    ``jobs`` targets run at once."""
    fake = Buck2Fake()
    fake.eval_file(REPO_ROOT / package / "BUCK", "root")
    targets = dict(fake.target_attrs)
    result = BuildResult()
    analysis_lock = threading.Lock()

    def deps_of(name: str) -> list[str]:
        attrs = targets[name]
        return [d.lstrip(":") for d in attrs.get("deps", []) + attrs.get("exported_deps", [])]

    def build(name: str) -> None:
        attrs = targets[name]
        rule = language.rule_of(attrs)
        given = {"srcs": json.dumps(attrs.get("srcs", []))}
        for key in language.passed_attrs:
            if key in attrs:
                given[key] = json.dumps(attrs[key])
        with analysis_lock:
            known: dict[str, str | AnalysedDep] = {
                f":{dep}": fake.dep(f"//{package}:{dep}") for dep in deps_of(name)
            }
            known[language.toolchain_label] = language.toolchain
            first = len(fake.actions)
            executed = first

            def resolve(paths: list[str]) -> list[str]:
                # A dynamic_output's f runs once what it reads is built, as in Buck2.
                nonlocal executed
                while executed < len(fake.actions):
                    run_action(project, fake.actions[executed], worker, result)
                    executed += 1
                return [(project / path).read_text() for path in paths]

            fake.dynamic_resolver = resolve
            analysis = fake.analyse(
                f"@prelude//{rule.split('_')[0]}:{rule}.bzl", rule, f"//{package}:{name}", given,
                known, language.prelude,
            )  # fmt: skip
            fake.dynamic_resolver = None
            result.analyses[name] = analysis
        for action in analysis.actions[executed - first :]:
            run_action(project, action, worker, result)

    run_in_dependency_order(list(targets), deps_of, jobs, build)
    return result


def run_action(
    project: Path, action: dict[str, Any], worker: Buck2Worker | None, result: BuildResult
) -> None:
    kind = action["kind"]
    if kind == "dynamic_output":
        return  # its f already ran (see build_package); its outputs are other actions'
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
