"""Routing native without Buck2 (CI has none): the Java example's compiles sent to the
embedded engine as Buck2's own RE client sends them (workers_dev/buck2_re_action.py), and
served by our executor on a warm remote javac worker.

This module owns the remote-side round trip of the javac worker under routing native: the
WorkerInfo exe is the one the prelude's worker_tool renders (the Starlark fake's entry
script, runtime words, config and marker), the remote backend is the javac worker as
toolchains/java/defs.bzl's RunInfo runs it (its launcher snippet, JVM_FLAGS, `-cp` its
classes directory), compiled here with a plain javac. It checks that compiles come back as class directories, that they
share one warm worker whatever key Buck2 sends, and that with workers off the same compile
runs one-shot to the same class bytes, and that the RunInfo compiles UTF-8 sources in a
POSIX locale, as an executor runs it. The real-Buck2 counterpart is
tests/buck2/test_native_remote.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clusters import cluster, executor_metrics, private_cluster
from tests.conftest import REPO_ROOT
from tests.starlark.test_native_worker_tool import analyse_native, run_info
from worker_runtime.envelope import ENVELOPE_ENV, Envelope, envelope_json
from worker_runtime.remote.client import RemoteClient, RemoteResult, RemoteSettings
from worker_runtime.remote.merkle import Blobs
from workers_dev.buck2_fake import Buck2Fake
from workers_dev.buck2_re_action import buck2_action

pytestmark = pytest.mark.timeout(300)

WORKER_SOURCES = sorted((REPO_ROOT / "toolchains" / "java" / "src").rglob("*.java"))
#: Where javac_worker_binary's `classes` would be, in the fake's buck-out layout.
WORKER_CLASSES = "buck-out/v2/gen/toolchains/java/__javac_worker_built__/classes"
WORKER_MAIN = "buck2.workers.javac.JavacWorker"
#: The runtime's launcher, as the fake's worker_runtime toolchain renders it. Only Buck2's
#: local side runs it: on an executor the entry script runs the remote backend instead.
LAUNCHER = ".venv/bin/worker-runtime"
RELEASE = "17"
CLASS_MAGIC = b"\xca\xfe\xba\xbe"


@dataclass(frozen=True)
class JavacTool:
    """The javac worker_tool as Buck2 would have built it, in a project directory."""

    root: Path
    #: The WorkerInfo exe (workers on): entry, runtime words, marker, remote backend.
    exe: list[str]
    #: The RunInfo (workers off): the remote backend alone.
    one_shot: list[str]
    #: The files of the tool every action carries: its remote side (entry, classes).
    files: list[str]


@dataclass(frozen=True)
class Target:
    """One java_library's compile: a source and the paths Buck2 gives its action."""

    name: str
    classpath: tuple[str, ...] = ()

    @property
    def package(self) -> str:
        return f"buck-out/v2/gen/root/demo/__{self.name.lower()}__"

    @property
    def source(self) -> str:
        return f"demo/src/demo/{self.name}.java"

    @property
    def classes(self) -> str:
        return f"{self.package}/classes"

    @property
    def class_file(self) -> str:
        return f"{self.classes}/demo/{self.name}.class"


ALPHA, BETA = Target("Alpha"), Target("Beta")
#: Compiled against Alpha's class directory as it came back from the executor.
GAMMA = Target("Gamma", classpath=(ALPHA.classes,))
SOURCES = {
    "Alpha": "public static int value() { return 1; }",
    "Beta": 'public static String name() { return "beta"; }',
    "Gamma": "public static int value() { return Alpha.value() + 2; }",
    "Delta": "public static long twice(long x) { return 2 * x; }",
    "Epsilon": "public static double half(double x) { return x / 2; }",
    "Zeta": 'public static String greet(String who) { return "hello " + who; }',
}


def files_under(root: Path, directory: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / directory).rglob("*") if p.is_file())


def javac_worker_run_info() -> list[str]:
    """The words of toolchains//:javac_worker_built's RunInfo as the fake renders them
    (javac_worker_binary's launcher snippet, which moves the protocol to fd 3, its JVM
    flags, `-cp` its classes, the main class), the classes at WORKER_CLASSES."""
    fake = Buck2Fake()
    fake.eval_file(REPO_ROOT / "toolchains" / "BUCK", "toolchains")
    srcs = fake.target_attrs["javac_worker_built"]["srcs"]
    analysis = Buck2Fake().analyse(
        "@toolchains//java:defs.bzl", "javac_worker_binary", "//toolchains:javac_worker_built",
        {"srcs": json.dumps(srcs), "java": '":java"', "javac": '":javac"'},
        {":java": 'fake_dep(RunInfo(args = cmd_args("java")))',
         ":javac": 'fake_dep(RunInfo(args = cmd_args("javac")))'},
    )  # fmt: skip
    words = [str(word) for word in analysis.provider("RunInfo")["args"]["cmd_args"]]
    classes = [i for i, word in enumerate(words) if word.endswith("/classes")]
    assert len(classes) == 1 and words[-1] == WORKER_MAIN and "-Xshare:auto" in words, words
    words[classes[0]] = WORKER_CLASSES
    return words


def write_tool(root: Path, entry_suffix: str = "", classes_of: Path | None = None) -> JavacTool:
    """Compiles the javac worker into ``root`` (or copies the classes ``classes_of``
    compiled) and writes the files of its worker_tool, each with the content and at the
    path the fake renders; ``entry_suffix`` makes another build of the tool's remote side."""
    if classes_of is not None:
        shutil.copytree(classes_of / WORKER_CLASSES, root / WORKER_CLASSES)
    else:
        subprocess.run(
            ["javac", "-nowarn", "-d", str(root / WORKER_CLASSES), *map(str, WORKER_SOURCES)],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
    backend = javac_worker_run_info()
    analysis = analyse_native({"remote_backend": run_info(backend)})
    exe = [str(word) for word in analysis.provider("WorkerInfo")["exe"]["cmd_args"]]
    one_shot = [str(word) for word in analysis.provider("RunInfo")["args"]["cmd_args"]]
    entry, config = analysis.action("write"), analysis.action("write_json")
    assert exe[0] == entry["output"] and exe[1] == LAUNCHER and config["output"] in exe, exe
    assert exe[exe.index("--remote-backend") + 1 :] == backend == one_shot, (exe, one_shot)
    for path, content, mode in (
        (entry["output"], entry["content"] + entry_suffix, 0o755),
        (config["output"], config["content"], 0o644),
        (LAUNCHER, "#!/bin/sh\necho 'worker-runtime: not on an executor' >&2\nexit 99\n", 0o755),
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
        (root / path).chmod(mode)
    # What worker_tool puts in every action's input root: the remote side only (the entry
    # and the remote backend's files), not the runtime's launcher and config, which only
    # Buck2's local side runs.
    tool_files = [entry["output"], *files_under(root, WORKER_CLASSES)]
    return JavacTool(root, exe, one_shot, tool_files)


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory) -> JavacTool:
    return write_tool(tmp_path_factory.mktemp("native-javac"))


@pytest.fixture(scope="module")
def engine() -> Iterator[Path]:
    with private_cluster("--executors", "1") as directory:
        yield directory


@pytest.fixture(scope="module")
def client(engine: Path) -> Iterator[RemoteClient]:
    remote = RemoteClient(RemoteSettings(f"unix://{engine}/run/buildgrid.sock", "main"))
    yield remote
    remote.close()


@pytest.fixture(scope="module")
def metrics_url(engine: Path) -> str:
    shown = cluster("status", "--json", "--dir", str(engine))
    [executor] = json.loads(shown.stdout)["executors"]
    return str(executor["metrics"])


def counters(metrics_url: str) -> dict[str, float]:
    """The executor's lease and persistent worker counters."""
    samples = executor_metrics(metrics_url)
    names = ("leases_total", "worker_starts_total", "worker_reuses_total")
    return {name: samples.get(f"executor_{name}", 0.0) for name in names}


def javac_arguments(target: Target) -> list[str]:
    """What java_library puts in the compile's argfile, one argument per line."""
    classpath = ["-cp", ":".join(target.classpath)] if target.classpath else []
    return ["-d", target.classes, *classpath, "--release", RELEASE, target.source]


def compile_remotely(
    client: RemoteClient, tool: JavacTool, target: Target, *, workers: bool, buck2_key: str = ""
) -> RemoteResult:
    """The target's compile, sent as Buck2 sends it with workers on (the WorkerInfo exe +
    ``@argfile``, under ``buck2_key``) or off (the RunInfo + ``@argfile``, no key); its
    classes are written under the project root, as Buck2's client materializes them."""
    root = tool.root
    source = root / target.source
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(
        f"package demo;\n\npublic class {target.name} {{\n  {SOURCES[target.name]}\n}}\n"
    )
    argfile, envelope = f"{target.package}/javac.args", f"{target.package}/javac.envelope.json"
    (root / argfile).parent.mkdir(parents=True, exist_ok=True)
    (root / argfile).write_text("".join(f"{a}\n" for a in javac_arguments(target)))
    deps = [f for d in target.classpath for f in files_under(root, d)]
    (root / envelope).write_text(
        envelope_json(Envelope(argfile, (target.source, *deps), (target.classes,)))
    )
    blobs = Blobs()
    built = buck2_action(
        root,
        exe=tool.exe if workers else tool.one_shot,
        arguments=[f"@{argfile}"],
        inputs=sorted({*tool.files, argfile, envelope, target.source, *deps}),
        outputs=[target.classes],
        buck2_key=buck2_key if workers else None,
        blobs=blobs,
        environment={ENVELOPE_ENV: envelope},
    )
    result = client.run(built, blobs, root)
    assert result.exit_code == 0, result.stderr.decode()
    assert not result.cached and result.worker == "executor-0-main", result
    return result


def class_bytes(root: Path, target: Target) -> bytes:
    data = (root / target.class_file).read_bytes()
    assert data.startswith(CLASS_MAGIC)
    return data


def test_compiles_come_back_from_one_warm_remote_worker(
    client: RemoteClient, tool: JavacTool, metrics_url: str
) -> None:
    """Each compile, under a Buck2 key of its own (any string), returns its class
    directory; the first starts the javac worker and the others are served by it warm."""
    before = counters(metrics_url)
    for served, target in enumerate((ALPHA, BETA, GAMMA)):
        assert not (tool.root / target.classes).exists()
        compile_remotely(client, tool, target, workers=True, buck2_key=f"buck2 says {target.name}")
        assert files_under(tool.root, target.classes) == [target.class_file]
        class_bytes(tool.root, target)
        now = counters(metrics_url)
        assert now["leases_total"] - before["leases_total"] == served + 1, (before, now)
        assert now["worker_starts_total"] - before["worker_starts_total"] == 1, (before, now)
        assert now["worker_reuses_total"] - before["worker_reuses_total"] == served, (before, now)


def test_buck2_s_key_is_not_trusted(
    client: RemoteClient, tool: JavacTool, metrics_url: str, tmp_path: Path
) -> None:
    """The executor keys workers on the tool files the exe names, never on Buck2's key:
    another build of the tool (its entry changed) under the same Buck2 key gets a worker
    of its own, and the original tool under that key still finds its warm one."""
    key = "the same key for both tools"
    compile_remotely(client, tool, Target("Delta"), workers=True, buck2_key=key)
    other = write_tool(tmp_path / "other", entry_suffix="# another build\n", classes_of=tool.root)
    before = counters(metrics_url)
    compile_remotely(client, other, Target("Delta"), workers=True, buck2_key=key)
    middle = counters(metrics_url)
    assert middle["worker_starts_total"] - before["worker_starts_total"] == 1, (before, middle)
    assert middle["worker_reuses_total"] == before["worker_reuses_total"], (before, middle)
    compile_remotely(client, tool, Target("Epsilon"), workers=True, buck2_key=key)
    after = counters(metrics_url)
    assert after["worker_starts_total"] == middle["worker_starts_total"], (middle, after)
    assert after["worker_reuses_total"] - middle["worker_reuses_total"] == 1, (middle, after)
    assert class_bytes(other.root, Target("Delta")) == class_bytes(tool.root, Target("Delta"))


def test_workers_off_compiles_one_shot_to_the_same_class_bytes(
    client: RemoteClient, tool: JavacTool, metrics_url: str, tmp_path: Path
) -> None:
    """With persistent workers off Buck2 sends the RunInfo (the remote backend alone)
    with the @argfile and no key: the executor runs the javac worker one-shot, and the
    classes are those of the warm path, and of a plain javac."""
    target = Target("Zeta")
    compile_remotely(client, tool, target, workers=True, buck2_key="workers on")
    warm = class_bytes(tool.root, target)
    shutil.rmtree(tool.root / target.classes)
    before = counters(metrics_url)
    result = compile_remotely(client, tool, target, workers=False)
    after = counters(metrics_url)
    assert files_under(tool.root, target.classes) == [target.class_file], result
    assert class_bytes(tool.root, target) == warm
    assert after["leases_total"] - before["leases_total"] == 1, (before, after)
    for name in ("worker_starts_total", "worker_reuses_total"):  # not on a worker
        assert after[name] == before[name], (name, before, after)
    plain = tmp_path / "plain"
    subprocess.run(
        ["javac", "-d", str(plain), "--release", RELEASE, str(tool.root / target.source)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert (plain / "demo" / f"{target.name}.class").read_bytes() == warm


def test_the_built_worker_reads_sources_and_writes_diagnostics_as_utf8_in_any_locale(
    tool: JavacTool,
) -> None:
    """The RunInfo javac_worker_binary makes (what an executor runs, with only PATH and
    the action's environment: a POSIX locale) lacked the UTF-8 flags the script launcher
    has: a JDK 17 read a non-ASCII source as ASCII ("unmappable character") and wrote
    its diagnostics' non-ASCII characters as `?`."""
    source = tool.root / "utf8" / "Cafe.java"
    source.parent.mkdir(exist_ok=True)
    source.write_text(
        'class Cafe { String s = "caf\u00e9"; void m() { th\u00e9(); } }\n', encoding="utf-8"
    )
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C"}
    result = subprocess.run(
        [*tool.one_shot, "-d", "utf8/out", "utf8/Cafe.java"],
        cwd=tool.root, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    diagnostics = result.stderr.decode("utf-8")
    assert result.returncode == 1, diagnostics
    assert "symbol:   method th\u00e9()" in diagnostics and "unmappable" not in diagnostics
