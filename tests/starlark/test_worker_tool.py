"""Analysis of the prelude's worker_tool rule, in Buck2's Starlark, against the fake API;
and the config it writes, accepted by the runtime and served for real."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import starlark as sl

from tests.conftest import RUNTIME, fake_backend
from worker_runtime.config import load_config_file
from workers_dev.buck2_fake import CELLS, Analysis, Buck2Fake, UnfreezableCapture
from workers_dev.build_runner import worker_tool_targets
from workers_dev.emulator import Buck2Worker

RUNTIME_COMMAND = 'fake_dep(RunInfo(args = cmd_args(".venv/bin/worker-runtime")))'


def backend_expr(argv: list[str]) -> str:
    return f"fake_dep(RunInfo(args = cmd_args({json.dumps(argv)})))"


def analyse_tool(
    attrs: dict[str, str], root_config: dict[tuple[str, str], str] | None = None
) -> tuple[Buck2Fake, Analysis]:
    fake = Buck2Fake(root_config=root_config or {})
    analysis = fake.analyse(
        "@prelude//worker:worker_tool.bzl",
        "worker_tool",
        "//tools:javac_worker",
        attrs,
        worker_tool_targets(fake, RUNTIME_COMMAND),
        constraints=[],  # configured for the default target platform: no constraints
    )
    return fake, analysis


def test_the_tools_env_reaches_the_one_shot_fallback_too(tmp_path: Path) -> None:
    """Warm, `env` reaches the backend through the runtime's config; workers off, the
    fallback ran without it, and the two built differently."""
    _, analysis = analyse_tool(
        {"backend": backend_expr(["printenv", "FOO", "BAR"]), "env": '{"FOO": "a b", "BAR": "c"}'}
    )
    one_shot = analysis.provider("RunInfo")["args"]["cmd_args"]
    assert one_shot == ["env", "BAR=c", "FOO=a b", "printenv", "FOO", "BAR"]
    assert json.loads(analysis.action("write_json")["content"])["env"] == {"FOO": "a b", "BAR": "c"}
    ran = subprocess.run(one_shot, capture_output=True, text=True, timeout=60, env={})
    assert ran.stdout.splitlines() == ["a b", "c"]


def test_worker_info_launches_the_runtime_with_the_written_config() -> None:
    _, analysis = analyse_tool(
        {"backend": backend_expr(["java", "-jar", "worker.jar"]), "protocol": '"json"'}
    )
    config = analysis.action("write_json")
    assert config["output"].endswith("__javac_worker__/worker_runtime.json")
    worker = analysis.provider("WorkerInfo")
    assert worker["exe"]["cmd_args"] == [
        ".venv/bin/worker-runtime",
        "serve",
        "--config",
        config["output"],
    ]
    assert worker["streaming"] is True and worker["concurrency"] is None
    assert worker["supports_bazel_remote_persistent_worker_protocol"] is False
    run_info = analysis.provider("RunInfo")
    assert run_info["args"]["cmd_args"] == ["java", "-jar", "worker.jar"]  # the one-shot fallback
    assert analysis.provider("DefaultInfo")["default_outputs"] == [{"artifact": config["output"]}]
    tool = analysis.provider("WorkerToolInfo")
    assert tool["config"] == {"artifact": config["output"]}


def test_config_carries_the_server_setting() -> None:
    """[persistent_workers] server reaches every worker tool's runtime config."""
    _, analysis = analyse_tool(
        {"backend": backend_expr(["w"])}, {("persistent_workers", "server"): "grpcio"}
    )
    assert json.loads(analysis.action("write_json")["content"])["server"] == "grpcio"


def test_config_carries_every_setting() -> None:
    _, analysis = analyse_tool(
        {
            "backend": backend_expr(["ghc-worker"]),
            "multiplex": "True",
            "cancellable": "True",
            "max_instances": "3",
            "key_env": '["JAVA_HOME"]',
            "env": '{"LANG": "C.UTF-8"}',
            "tool_inputs": '["worker.jar"]',
            "concurrency": "8",
            "streaming": "False",
        }
    )
    content = json.loads(analysis.action("write_json")["content"])
    assert content == {
        "cancellable": True,
        "command": ["ghc-worker"],
        "env": {"LANG": "C.UTF-8"},
        "key_env": ["JAVA_HOME"],
        "max_instances": 3,
        "multiplex": True,
        "protocol": "proto",
        "remote": {"tls": False, "fallback_local": False, "cache": True, "persistent": True},
        "routing": "local",
        "server": "h2",
        "tool_inputs": ["tools/worker.jar"],
    }
    worker = analysis.provider("WorkerInfo")
    assert worker["concurrency"] == 8 and worker["streaming"] is False


def test_config_written_by_the_prelude_is_served_by_the_runtime(tmp_path: Path) -> None:
    """Round trip: the JSON worker_tool writes is what `worker-runtime serve --config` runs."""
    _, analysis = analyse_tool({"backend": backend_expr(fake_backend()), "protocol": '"json"'})
    config_path = tmp_path / "worker_runtime.json"
    config_path.write_text(analysis.action("write_json")["content"])
    assert load_config_file(config_path).validated().command == tuple(fake_backend())
    worker = Buck2Worker(
        [*RUNTIME, "serve", "--no-daemon", "--config", str(config_path)], project_root=tmp_path
    )
    with worker:
        assert worker.run("echo", "from", "the", "prelude").stderr == "from the prelude"


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({}, "missing mandatory attribute `backend`"),
        ({"backend": backend_expr(["w"]), "protocol": '"xml"'}, '"xml" is not one of'),
        # Set on the target: the error names the attribute, not .buckconfig.
        (
            {"backend": backend_expr(["w"]), "routing": '"cloud"'},
            'routing = "cloud" (its `routing` attribute) is not one of local, remote',
        ),
        ({"backend": backend_expr(["w"]), "multiplx": "True"}, "unknown attribute `multiplx`"),
        # The remote settings come from toolchains//:worker_settings, not from each tool.
        ({"backend": backend_expr(["w"]), "remote_endpoint": '"x"'}, "unknown attribute"),
        ({"backend": backend_expr(["w"]), "max_instances": '"2"'}, "must be one of"),
        ({"backend": backend_expr(["w"]), "_runtime": '"//x:y"'}, "cannot be set (default_only)"),
        ({"backend": "fake_dep(DefaultInfo())"}, "requires a dep that provides"),
        # Buck2 unpacks it as a usize: -1 was a type error naming no attribute
        (
            {"backend": backend_expr(["w"]), "concurrency": "-1"},
            "concurrency = -1 must be 1 or more",
        ),
        ({"backend": backend_expr(["w"]), "concurrency": "0"}, "concurrency = 0 must be 1"),
        # What the runtime refuses at its start: every action on the tool failed then.
        (
            {"backend": backend_expr(["w"]), "cancellable": "True"},
            "cancellable = True needs multiplex = True",
        ),
        ({"backend": backend_expr(["w"]), "max_instances": "0"}, "max_instances = 0 must be 1"),
        ({"backend": backend_expr(["w"]), "key_env": '["A=B"]'}, 'key_env holds "A=B"'),
        ({"backend": backend_expr(["w"]), "key_env": '[""]'}, 'key_env holds ""'),
    ],
)
def test_bad_attributes_are_analysis_errors(attrs: dict[str, str], message: str) -> None:
    with pytest.raises(sl.StarlarkError) as info:
        analyse_tool(attrs)
    assert message in str(info.value)


def test_fake_rejects_what_buck2_rejects(tmp_path: Path) -> None:
    """The fake is only worth its tests if it is as strict as Buck2."""
    fake = Buck2Fake()
    cases = {
        "WorkerInfo(exe = [])": "exe must be a non-empty command line",
        "WorkerInfo(exe = cmd_args())": "exe must be a non-empty command line",
        'WorkerInfo(exe = ["w"], color = "red")': "color",
        'WorkerRunInfo(["w"])': "positional",
        'cmd_args(("a", "b"))': "tuples and ints are not accepted",
        'DefaultInfo(default_output = "a", default_outputs = ["b"])': "mutually exclusive",
        'provider(fields = ["a"], documentation = "x")': "documentation",
        'rule(impl = None, attrs = {"name": attrs.string()})': "overrides internal attribute",
        "attrs.option(attrs.int(), default = 1)": "default must be None",
        'attrs.string(dflt = "x")': "dflt",
    }
    for expression, message in cases.items():
        assert message in fake.error_of(expression, tmp_path), expression


def test_rule_must_return_default_info(tmp_path: Path) -> None:
    rules = tmp_path / "rules.bzl"
    rules.write_text(
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        "    return [RunInfo(args = cmd_args('x'))]\n"
        "bad = rule(impl = _impl, attrs = {})\n"
    )
    fake = Buck2Fake()
    harness = (
        'load(":rules.bzl", "bad")\ndef go():\n    return fake_analyse(bad, "//p:t", {}, {})\n'
    )
    module = fake.eval_file(tmp_path / "h.bzl", "root", harness)
    with pytest.raises(sl.StarlarkError, match="did not receive a `DefaultInfo` provider"):
        module.call("go")


def test_prelude_exports_and_toolchain_target() -> None:
    fake = Buck2Fake()
    check = 'load("@prelude//:prelude.bzl", "WorkerToolInfo", "host_command", "worker_tool")\n'
    fake.eval_file(CELLS["root"] / "__check__.bzl", "root", check)
    fake.eval_file(CELLS["toolchains"] / "BUCK", "toolchains")
    assert fake.targets == [
        "worker_runtime", "worker_settings", "javac_worker_bin", "javac", "jar", "java_command", "javac_worker_built",
        "javac_worker", "java", "ghc_worker_bin", "ghc_argfile", "ghc", "ar",
        "haskell_scan_imports", "ghc_worker_built", "ghc_worker", "haskell",
    ]  # fmt: skip
    assert (
        "java/src/buck2/workers/javac/JavacWorker.java"
        in fake.target_attrs["javac_worker"]["tool_inputs"]
    )


def test_prelude_loads_are_cell_relative() -> None:
    """So that the folder can also be mounted as an extra cell next to Buck2's prelude."""
    for path in CELLS["prelude"].rglob("*.bzl"):
        for line in path.read_text().splitlines():
            assert not line.startswith('load("@'), f"{path}: {line}"


DYNAMIC_RULES = """
def _impl(ctx: AnalysisContext) -> list[Provider]:
    listing = ctx.actions.write("listing.txt", "a b")
    out = ctx.actions.declare_output("out.txt")
    other = ctx.actions.write("other.txt", "bound outside f")
    def f(dctx, artifacts, outputs):
        words = artifacts[listing].read_string().split(" ")
        MODE
    ctx.actions.dynamic_output(dynamic = [listing], inputs = [], outputs = OUTPUTS, f = f)
    return [DefaultInfo(default_output = out)]
r = rule(impl = _impl, attrs = {})
"""


@pytest.mark.parametrize(
    ("mode", "outputs", "message"),
    [
        ("dctx.actions.write(outputs[out].as_output(), words[1])", "[out.as_output()]", None),
        ("pass", "[out.as_output()]", "f did not bind every output"),
        ('dctx.actions.write(outputs[out].as_output(), "x")', "[]", "non-empty list"),
        ('dctx.actions.write(outputs[out].as_output(), "x")', "[out]", "must be OutputArtifacts"),
        (
            'dctx.actions.write(other.as_output(), "x")',
            "[out.as_output()]",
            "was not declared here",
        ),
    ],
)
def test_fake_dynamic_output_is_as_strict_as_buck2(
    tmp_path: Path, mode: str, outputs: str, message: str | None
) -> None:
    """f runs with the dynamic artifacts' contents, must bind every output through
    `outputs[...]`, and nothing else may be left unbound."""
    (tmp_path / "rules.bzl").write_text(
        DYNAMIC_RULES.replace("MODE", mode).replace("OUTPUTS", outputs)
    )
    fake = Buck2Fake()
    fake.dynamic_resolver = lambda paths: ["a b" for _ in paths]
    harness = 'load(":rules.bzl", "r")\ndef go():\n    return fake_analyse(r, "//p:t", {}, {})\n'
    module = fake.eval_file(tmp_path / "h.bzl", "root", harness)
    if message is None:
        module.call("go")
        written = [a for a in fake.actions if a["kind"] == "write"]
        assert written[-1] == {
            "kind": "write",
            "output": "buck-out/v2/gen/root/p/__t__/out.txt",
            "content": "b",
        }
    else:
        with pytest.raises(sl.StarlarkError, match=message):
            module.call("go")


@pytest.mark.parametrize(
    ("body", "captured"),
    [
        # The closure reads ctx.label: Buck2 must freeze ctx with it, and cannot.
        ("fail(ctx.label.name)", "ctx"),
        ("actions.write(outputs[out].as_output(), '')", "actions"),
        ("dctx.actions.write(outputs[out].as_output(), name)", None),
    ],
)
def test_fake_refuses_a_dynamic_callback_that_captures_ctx(
    tmp_path: Path, body: str, captured: str | None
) -> None:
    """Buck2 freezes a dynamic_output callback with what it captured; ctx and ctx.actions
    cannot be frozen ("Value of type `AnalysisContext` cannot be frozen")."""
    (tmp_path / "rules.bzl").write_text(
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        "    actions = ctx.actions\n"
        "    name = ctx.label.name\n"
        '    src = ctx.actions.write("src.txt", "a")\n'
        '    out = ctx.actions.declare_output("out.txt")\n'
        "    def f(dctx, artifacts, outputs):\n"
        f"        {body}\n"
        "    ctx.actions.dynamic_output(dynamic = [src], outputs = [out.as_output()], f = f)\n"
        "    return [DefaultInfo(default_output = out)]\n"
        "r = rule(impl = _impl, attrs = {})\n"
    )
    fake = Buck2Fake()
    fake.dynamic_resolver = lambda paths: ["a" for _ in paths]
    harness = 'load(":rules.bzl", "r")\ndef go():\n    return fake_analyse(r, "//p:t", {}, {})\n'
    if captured is None:
        fake.eval_file(tmp_path / "h.bzl", "root", harness).call("go")
    else:
        # Raised while h.bzl loads rules.bzl, so it reaches here wrapped by the loader.
        problem = f"UnfreezableCapture: .*captures `{captured}`.*cannot be frozen"
        with pytest.raises((UnfreezableCapture, sl.StarlarkError), match=problem):
            fake.eval_file(tmp_path / "h.bzl", "root", harness)


def test_a_worker_tool_under_the_unspecified_platform_fails_as_in_buck2() -> None:
    """Without a target platform Buck2 cannot resolve the routing select(): .buckconfig's
    target_platform_detector_spec gives every target prelude//platforms:default."""
    fake = Buck2Fake()
    with pytest.raises(sl.StarlarkError, match=r"<unspecified>.*select"):
        fake.analyse(
            "@prelude//worker:worker_tool.bzl", "worker_tool", "//tools:w",
            {"backend": backend_expr(["w"])}, worker_tool_targets(fake),
        )  # fmt: skip


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"script": '"java/javac-worker"'}, ["toolchains/java/javac-worker"]),
        (
            {"command": '["python3"]', "script": '"haskell/scan_imports.py"'},
            ["python3", "toolchains/haskell/scan_imports.py"],
        ),
        ({"command": '["javac"]'}, ["javac"]),
    ],
)
def test_host_command_script_is_a_source_of_its_package(
    attrs: dict[str, str], expected: list[str]
) -> None:
    """A script given as a source renders as its path from the project root, so it holds
    wherever the toolchains cell is mounted."""
    analysis = Buck2Fake().analyse(
        "@prelude//worker:host_command.bzl", "host_command", "//toolchains:tool", attrs
    )
    assert analysis.provider("RunInfo")["args"]["cmd_args"] == expected


def test_host_command_without_command_or_script_is_an_analysis_error() -> None:
    with pytest.raises(sl.StarlarkError, match="needs a command or a script"):
        Buck2Fake().analyse(
            "@prelude//worker:host_command.bzl", "host_command", "//toolchains:tool", {}
        )


def test_fake_artifacts_of_one_file_are_equal_as_in_buck2(tmp_path: Path) -> None:
    """Buck2 dedupes two values of one artifact; the fake once kept both, which hid a
    link order that only worked with every archive listed twice."""
    module = Buck2Fake().eval_file(
        tmp_path / "case.bzl",
        "root",
        'load("@prelude//utils:lists.bzl", "unique")\n'
        'a = fake_artifact("buck-out/x/lib.a")\n'
        'b = fake_artifact("buck-out/x/lib.a")\n'
        "def check():\n"
        "    return [a == b, len(unique([a, b]))]\n",
    )
    assert module.call("check") == [True, 1]


def test_fake_refuses_a_provider_as_an_annotation(tmp_path: Path) -> None:
    """Buck2 evaluates a .bzl once per cell that loads it, so a provider made in another
    cell's evaluation fails an annotation naming it (seen when the rules are mounted
    beside Buck2's bundled prelude)."""
    (tmp_path / "rules.bzl").write_text(
        'load("@prelude//:prelude.bzl", "WorkerToolInfo")\n'
        "def use(tool: WorkerToolInfo) -> None:\n"
        "    pass\n"
    )
    harness = 'load(":rules.bzl", "use")\n'
    with pytest.raises(
        (UnfreezableCapture, sl.StarlarkError), match="types its tool as `WorkerToolInfo`"
    ):
        Buck2Fake().eval_file(tmp_path / "h.bzl", "root", harness)
