"""worker_run and the example rule: the actions they register, and those actions executed
the way Buck2 would, on a warm worker through the runtime and one-shot, with equal results."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import starlark as sl

from tests.conftest import RUNTIME
from workers_dev.buck2_fake import REPO_ROOT, Analysis, Buck2Fake
from workers_dev.build_runner import worker_tool_targets
from workers_dev.emulator import Buck2Worker, make_command

BACKEND = ["python3", "examples/text_stats/text_stats_worker.py"]
TOOL_LABEL = "root//examples/text_stats:text_stats_worker"
PRELUDE = {"@prelude//:prelude.bzl": ["WorkerToolInfo"]}


def tool_expr(config_path: str = "cfg/worker_runtime.json") -> str:
    backend = f"cmd_args({json.dumps(BACKEND)})"
    return (
        "fake_dep_of({WorkerToolInfo: WorkerToolInfo("
        f'worker = WorkerInfo(exe = cmd_args(".venv/bin/worker-runtime", "serve", "--config", {json.dumps(config_path)})), '
        f"fallback = RunInfo(args = {backend}), config = {json.dumps(config_path)})}})"
    )


def analyse_report(srcs: list[str]) -> Analysis:
    return Buck2Fake().analyse(
        "@root//examples/worker_rule:text_stats.bzl",
        "text_stats_report",
        "//examples/worker_rule:report",
        {"srcs": json.dumps(srcs)},
        {TOOL_LABEL: tool_expr()},
        PRELUDE,
    )


def test_worker_run_registers_argfile_envelope_and_worker_action() -> None:
    analysis = analyse_report(["a.txt", "b.txt"])
    argfile = analysis.action("write")
    envelope = analysis.action("write_json")
    run = analysis.action("run")
    report = "buck-out/v2/gen/root/examples/worker_rule/__report__/report.json"
    assert argfile["output"].endswith("/text_stats.args")
    srcs = ["examples/worker_rule/a.txt", "examples/worker_rule/b.txt"]
    assert argfile["content"].split("\n") == ["--out", report, *srcs]
    assert run["arguments"] == ["@" + argfile["output"]]  # one @argfile, as remote workers need
    assert run["worker"] == [
        ".venv/bin/worker-runtime",
        "serve",
        "--config",
        "cfg/worker_runtime.json",
    ]
    assert run["fallback"] == BACKEND
    assert run["category"] == "text_stats" and run["outputs"] == [report]
    assert run["env"] == {"WORKER_RUNTIME_ENVELOPE": envelope["output"]}
    assert json.loads(envelope["content"]) == {
        "argfile": argfile["output"],
        "inputs": srcs,
        "outputs": [report],
        "version": 1,
    }
    assert analysis.provider("DefaultInfo")["default_outputs"] == [{"artifact": report}]


def test_example_buck_file_declares_its_targets() -> None:
    fake = Buck2Fake()
    fake.eval_file(REPO_ROOT / "examples" / "worker_rule" / "BUCK", "root")
    fake.eval_file(REPO_ROOT / "examples" / "text_stats" / "BUCK", "root")
    assert fake.targets == ["report", "text_stats_bin", "text_stats_worker"]
    # The worker's script is an input of its actions and part of its worker key.
    assert fake.target_attrs["text_stats_bin"]["script"] == "text_stats_worker.py"
    assert fake.target_attrs["text_stats_worker"]["tool_inputs"] == ["text_stats_worker.py"]


def materialize(root: Path, analysis: Analysis, sources: dict[str, str]) -> None:
    """Does what Buck2 does before the run action: sources in place, write actions done."""
    for path, text in sources.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    for action in analysis.actions:
        if action["kind"] in ("write", "write_json"):
            (root / action["output"]).parent.mkdir(parents=True, exist_ok=True)
            (root / action["output"]).write_text(action["content"])
        if action["kind"] == "run":
            for output in action["outputs"]:
                (root / output).parent.mkdir(parents=True, exist_ok=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(REPO_ROOT / "examples" / "text_stats", root / "examples" / "text_stats")
    return root


def run_action_both_ways(project: Path, analysis: Analysis) -> tuple[bytes, bytes]:
    run: dict[str, Any] = analysis.action("run")
    report = project / run["outputs"][0]
    # Workers off: Buck2 runs WorkerRunInfo.exe + arguments, with the action's env.
    env = dict(os.environ, **run["env"])
    one_shot = subprocess.run(
        [*run["fallback"], *run["arguments"]], cwd=project, env=env, capture_output=True, timeout=60
    )
    assert one_shot.returncode == 0, one_shot.stderr
    cold = report.read_bytes()
    report.unlink()
    # Workers on: the worker_tool's config, served by the runtime; Buck2 sends the arguments.
    fake = Buck2Fake()
    tool = fake.analyse(
        "@prelude//worker:worker_tool.bzl", "worker_tool", "//examples/worker_rule:text_stats_worker",
        {"backend": f"fake_dep(RunInfo(args = cmd_args({json.dumps(BACKEND)})))", "protocol": '"json"'},
        worker_tool_targets(fake),
        constraints=[],
    )  # fmt: skip
    config = tool.action("write_json")
    (project / config["output"]).parent.mkdir(parents=True, exist_ok=True)
    (project / config["output"]).write_text(config["content"])
    worker = Buck2Worker(
        [*RUNTIME, "serve", "--no-daemon", "--config", config["output"]], project_root=project
    )
    with worker:
        response = worker.execute(make_command(run["arguments"], env=run["env"]))
    assert response.exit_code == 0, response.stderr
    return cold, report.read_bytes()


def test_example_action_runs_warm_and_one_shot_with_the_same_output(project: Path) -> None:
    srcs = ["examples/worker_rule/a.txt", "examples/worker_rule/b.txt"]
    analysis = analyse_report([s.removeprefix("examples/worker_rule/") for s in srcs])
    materialize(project, analysis, {s: (REPO_ROOT / s).read_text() for s in srcs})
    cold, warm = run_action_both_ways(project, analysis)
    assert cold == warm
    assert json.loads(warm)["files"][0]["path"] == srcs[0]


def with_tool_harness(fake: Buck2Fake, tmp_path: Path) -> sl.FrozenModule:
    """A harness whose go() analyses rule `r` of tmp_path/rules.bzl with a worker tool."""
    harness = (
        'load("@prelude//:prelude.bzl", "WorkerToolInfo")\n'
        'load(":rules.bzl", "r")\n'
        f'def go():\n    return fake_analyse(r, "//p:t", {{"tool": {tool_expr()}}}, {{}})\n'
    )
    return fake.eval_file(tmp_path / "h.bzl", "root", harness)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ('cmd_args("--out", "x"), category = "c"', "needs at least one output"),
        (
            'cmd_args("--out", out.as_output(), pending), category = "c"',
            "Input artifact must already be bound",
        ),
        (
            'cmd_args("--out", out.as_output()), category = "Bad-Category"',
            "category must be snake_case",
        ),
        (
            'cmd_args("--out", out.as_output()), category = "c", timeout_seconds = 0',
            "timeout_seconds must be greater than 0",
        ),
        (
            'cmd_args("--out", out.as_output()), category = "c", weight = 0',
            "weight must be greater than 0",
        ),
    ],
)
def test_worker_run_misuse_is_an_analysis_error(tmp_path: Path, args: str, message: str) -> None:
    (tmp_path / "rules.bzl").write_text(
        'load("@prelude//:prelude.bzl", "WorkerToolInfo", "worker_run")\n'
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        '    out = ctx.actions.declare_output("out")\n'
        '    pending = ctx.actions.declare_output("pending")\n'
        f"    worker_run(ctx.actions, tool = ctx.attrs.tool[WorkerToolInfo], args = {args})\n"
        "    return [DefaultInfo()]\n"
        'r = rule(impl = _impl, attrs = {"tool": attrs.exec_dep(providers = [WorkerToolInfo])})\n'
    )
    module = with_tool_harness(Buck2Fake(), tmp_path)
    with pytest.raises(sl.StarlarkError, match=message):
        module.call("go")


@pytest.mark.parametrize(
    "name", ["weight", "weight_percentage", "dep_files", "metadata_path", "env", "exe"]
)
def test_the_fake_rejects_an_explicit_none_where_buck2_takes_an_option(
    tmp_path: Path, name: str
) -> None:
    """Buck2 types these Option<...>: leaving one out is fine, None is a type error. The
    fake must fail where Buck2 does (worker_run once passed weight = None to every action)."""
    (tmp_path / "rules.bzl").write_text(
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        '    out = ctx.actions.declare_output("out")\n'
        f'    ctx.actions.run(cmd_args("touch", out.as_output()), category = "c", {name} = None)\n'
        "    return [DefaultInfo()]\n"
        "r = rule(impl = _impl, attrs = {})\n"
    )
    harness = 'load(":rules.bzl", "r")\ndef go():\n    return fake_analyse(r, "//p:t", {}, {})\n'
    module = Buck2Fake().eval_file(tmp_path / "h.bzl", "root", harness)
    with pytest.raises(sl.StarlarkError, match=f"`{name}` doesn't match"):
        module.call("go")


@pytest.mark.parametrize("weight", [None, 2])
def test_worker_run_passes_weight_only_when_set(tmp_path: Path, weight: int | None) -> None:
    (tmp_path / "rules.bzl").write_text(
        'load("@prelude//:prelude.bzl", "WorkerToolInfo", "worker_run")\n'
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        '    out = ctx.actions.declare_output("out")\n'
        "    worker_run(ctx.actions, tool = ctx.attrs.tool[WorkerToolInfo], "
        f'args = cmd_args("--out", out.as_output()), category = "c", weight = {weight})\n'
        "    return [DefaultInfo(default_output = out)]\n"
        'r = rule(impl = _impl, attrs = {"tool": attrs.exec_dep(providers = [WorkerToolInfo])})\n'
    )
    fake = Buck2Fake()
    with_tool_harness(fake, tmp_path).call("go")
    (run,) = [a for a in fake.actions if a["kind"] == "run"]
    assert run["weight"] == weight


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # registry.rs: a category more than once needs an identifier on every action of
        # it, whichever comes first (the fake once checked only exact pairs)
        (
            'ctx.actions.run(cmd_args("touch", a.as_output()), category = "c", identifier = "x")\n'
            '    ctx.actions.run(cmd_args("touch", b.as_output()), category = "c")',
            "multiple actions with category `c` and at least one of them had no identifier",
        ),
        # one output inside another, and paths that are not normalized
        ('ctx.actions.declare_output("a/b")', "conflicting output locations"),
        ('ctx.actions.declare_output("./z")', "normalized forward-relative"),
        ('ctx.actions.declare_output("q//z")', "normalized forward-relative"),
        # typ.rs: cmd_args' options are Option<...>, None is a type error
        ('cmd_args("x", delimiter = None)', "`delimiter` doesn't match"),
        ('cmd_args("x", quote = None)', "`quote` doesn't match"),
        ('cmd_args("x", hidden = None)', "`hidden` doesn't match"),
        # argument types Buck2 unpacks
        ('WorkerInfo(exe = ["w"], concurrency = -1)', "parameter `concurrency`"),
        ('WorkerRunInfo(worker = "nope")', "expected `None | WorkerInfo`"),
        ('DefaultInfo(default_outputs = [cmd_args("x")])', "`None | list[Artifact]`"),
        (
            'ctx.actions.run(cmd_args("touch", a.as_output()), category = "c", timeout_seconds = 1.5)',
            "parameter `timeout_seconds` of type `None | int`",
        ),
    ],
)
def test_the_fake_fails_where_buck2_fails(tmp_path: Path, body: str, message: str) -> None:
    """Differences found against the real Buck2 (built from source): each was accepted by
    the fake and is an analysis error in Buck2, with the message Buck2 gives."""
    (tmp_path / "rules.bzl").write_text(
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        '    a = ctx.actions.declare_output("a")\n'
        '    b = ctx.actions.declare_output("b")\n'
        f"    {body}\n"
        "    return [DefaultInfo()]\n"
        "r = rule(impl = _impl, attrs = {})\n"
    )
    harness = 'load(":rules.bzl", "r")\ndef go():\n    return fake_analyse(r, "//p:t", {}, {})\n'
    module = Buck2Fake().eval_file(tmp_path / "h.bzl", "root", harness)
    with pytest.raises(sl.StarlarkError, match=re.escape(message)):
        module.call("go")


def test_the_fake_renders_paths_and_empty_joins_as_buck2_does(tmp_path: Path) -> None:
    """builder.rs: a path of one component gets `./` (execvp looks a name without `/` up
    on PATH), the empty one is `.`, and a delimited cmd_args that joined nothing is still
    one argument, empty. The fake rendered `Main.hs`, failed on `parent` reaching the
    root, and dropped the empty join."""
    (tmp_path / "rules.bzl").write_text(
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        '    out = ctx.actions.declare_output("out")\n'
        "    ctx.actions.run(cmd_args(\n"
        '        "tool", ctx.attrs.src, cmd_args(ctx.attrs.src, parent = 1),\n'
        '        cmd_args([], delimiter = ":"), out.as_output(),\n'
        '    ), category = "c")\n'
        "    return [DefaultInfo()]\n"
        'r = rule(impl = _impl, attrs = {"src": attrs.source()})\n'
    )
    analysis = Buck2Fake().analyse(
        ":rules.bzl", "r", "//:t", {"src": '"Main.hs"'}, harness_dir=tmp_path
    )
    (run,) = [a for a in analysis.actions if a["kind"] == "run"]
    assert run["arguments"][:4] == ["tool", "./Main.hs", ".", ""]
