"""A worker_tool under routing native (Buck2's own remote persistent workers): its
WorkerInfo runs worker-runtime when Buck2 starts it locally and the worker Buck2 built when
a remote executor starts it, and every action carries the worker's files as inputs. The
entry script it writes is run for real, both ways."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import starlark as sl

from workers_dev.buck2_fake import Analysis, Buck2Fake
from workers_dev.build_runner import worker_tool_targets

RUNTIME_COMMAND = 'fake_dep(RunInfo(args = cmd_args(".venv/bin/worker-runtime")))'
NATIVE = ["prelude//platforms:routing_native"]


def run_info(argv: list[str]) -> str:
    return f"fake_dep(RunInfo(args = cmd_args({json.dumps(argv)})))"


def analyse_native(attrs: dict[str, str]) -> Analysis:
    fake = Buck2Fake()
    return fake.analyse(
        "@prelude//worker:worker_tool.bzl", "worker_tool", "//tools:javac_worker",
        {"backend": run_info(["toolchains/java/javac-worker"]), **attrs},
        worker_tool_targets(fake, RUNTIME_COMMAND),
        constraints=NATIVE,
    )  # fmt: skip


def test_native_worker_info_names_the_runtime_and_the_built_worker() -> None:
    analysis = analyse_native({"remote_backend": run_info(["java", "-cp", "classes", "Main"])})
    config = analysis.action("write_json")["output"]
    entry = analysis.action("write")
    assert entry["output"].endswith("__javac_worker__/worker_entry.sh")
    worker = analysis.provider("WorkerInfo")
    assert worker["exe"]["cmd_args"] == [
        entry["output"], ".venv/bin/worker-runtime", "serve", "--config", config,
        "--remote-backend", "java", "-cp", "classes", "Main",
    ]  # fmt: skip
    assert worker["supports_bazel_remote_persistent_worker_protocol"] is True
    # One-shot (workers off, or an engine without workers): the built worker, with the
    # worker's files as hidden inputs, so that a remote executor gets them.
    fallback = analysis.provider("RunInfo")["args"]
    assert fallback["cmd_args"] == ["java", "-cp", "classes", "Main"]
    assert json.loads(analysis.action("write_json")["content"])["routing"] == "native"


def test_native_fallback_can_be_another_command() -> None:
    analysis = analyse_native(
        {"remote_backend": run_info(["ghc-worker"]), "remote_fallback": run_info(["ghc-argfile"])}
    )
    assert analysis.provider("RunInfo")["args"]["cmd_args"] == ["ghc-argfile"]


def test_native_without_a_remote_backend_is_an_analysis_error() -> None:
    with pytest.raises(sl.StarlarkError, match="javac_worker: routing native needs remote_backend"):
        analyse_native({})


def test_other_routings_ignore_the_remote_backend() -> None:
    fake = Buck2Fake(root_config={("persistent_workers", "remote_endpoint"): "grpc://127.0.0.1:1"})
    analysis = fake.analyse(
        "@prelude//worker:worker_tool.bzl", "worker_tool", "//tools:javac_worker",
        {"backend": run_info(["w"]), "remote_backend": run_info(["built"])},
        worker_tool_targets(fake, RUNTIME_COMMAND),
        constraints=["prelude//platforms:routing_remote"],
    )  # fmt: skip
    worker = analysis.provider("WorkerInfo")
    assert worker["exe"]["cmd_args"][0] == ".venv/bin/worker-runtime"
    assert worker["supports_bazel_remote_persistent_worker_protocol"] is False


@pytest.fixture
def entry(tmp_path: Path) -> Path:
    analysis = analyse_native({"remote_backend": run_info(["built"])})
    script = tmp_path / "worker_entry.sh"
    script.write_text(analysis.action("write")["content"])
    script.chmod(0o755)
    return script


def printer(tmp_path: Path, name: str) -> str:
    """A command that prints its name and arguments, one per line."""
    path = tmp_path / name
    path.write_text(f'#!/bin/sh\necho {name}\nfor a do echo "[$a]"; done\n')
    path.chmod(0o755)
    return str(path)


def run_entry(entry: Path, argv: list[str], socket: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "WORKER_SOCKET"}
    if socket is not None:
        env["WORKER_SOCKET"] = socket
    done = subprocess.run(
        [str(entry), *argv], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.splitlines()


def test_entry_runs_the_runtime_when_buck2_starts_it_locally(entry: Path, tmp_path: Path) -> None:
    runtime, built = printer(tmp_path, "runtime"), printer(tmp_path, "built")
    argv = [runtime, "serve", "--config", "a b.json", "--remote-backend", built, "-cp", "c"]
    assert run_entry(entry, argv, "/tmp/worker.sock") == [
        "runtime", "[serve]", "[--config]", "[a b.json]",
    ]  # fmt: skip


def test_entry_runs_the_built_worker_when_an_executor_starts_it(
    entry: Path, tmp_path: Path
) -> None:
    runtime, built = printer(tmp_path, "runtime"), printer(tmp_path, "built")
    argv = [runtime, "serve", "--remote-backend", built, "-cp", "c d", "@req.args"]
    assert run_entry(entry, [*argv, "--persistent_worker"], None) == [
        "built", "[-cp]", "[c d]", "[@req.args]", "[--persistent_worker]",
    ]  # fmt: skip
    # An empty WORKER_SOCKET is not Buck2's: the remote side still.
    assert run_entry(entry, argv, "")[0] == "built"


def test_native_remote_side_and_fallback_get_the_tool_s_env() -> None:
    """The local warm backend gets `env` through the runtime's config; the remote worker
    and the one-shot fallback ran without it, so one action built differently by where
    it ran."""
    analysis = analyse_native(
        {
            "remote_backend": run_info(["built"]),
            "remote_fallback": run_info(["one-shot"]),
            "env": '{"LANG": "C.UTF-8", "A": "1"}',
        }
    )
    worker = analysis.provider("WorkerInfo")["exe"]["cmd_args"]
    assert worker[worker.index("--remote-backend") :] == [
        "--remote-backend", "env", "A=1", "LANG=C.UTF-8", "built",
    ]  # fmt: skip
    assert analysis.provider("RunInfo")["args"]["cmd_args"] == [
        "env", "A=1", "LANG=C.UTF-8", "one-shot",
    ]  # fmt: skip
    assert json.loads(analysis.action("write_json")["content"])["env"] == {
        "LANG": "C.UTF-8", "A": "1",
    }  # fmt: skip
