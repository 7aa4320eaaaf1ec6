"""Errors as a user meets them under the real Buck2: what ``buck2 build`` prints must say
what went wrong and how to fix it. docs/running-under-buck2.md quotes these messages."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.buck2.conftest import make_project
from tests.buck2.harness import Buck2Project

pytestmark = pytest.mark.timeout(1800)
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def project(buck2: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buck2Project]:
    for project in make_project(buck2, tmp_path_factory.mktemp("faults")):
        faults = project.root / "faults"
        faults.mkdir()
        shutil.copy(FIXTURES / "BUCK.fixture", faults / "BUCK")
        shutil.copy(FIXTURES / "faults.bzl", faults / "faults.bzl")
        yield project


def failed_build(project: Buck2Project, *args: str) -> str:
    result = project.run("build", *args, check=False)
    assert result.returncode != 0, result.stderr
    return result.stderr


def test_a_missing_runtime_names_the_setting_to_fix(project: Buck2Project) -> None:
    stderr = failed_build(
        project, "-c", "persistent_workers.runtime=/nonexistent/worker-runtime", "//faults:crash"
    )
    assert "worker-runtime: not found: '/nonexistent/worker-runtime'" in stderr
    assert "Set [persistent_workers] runtime" in stderr


def test_a_compile_error_shows_the_compilers_message(project: Buck2Project) -> None:
    source = project.root / "examples/java/src/com/example/bookshop/util/Strings.java"
    good = source.read_text()
    source.write_text(good.replace("public final class Strings", "public final class Strings {{"))
    try:
        stderr = failed_build(project, "//examples/java:util")
    finally:
        source.write_text(good)
    assert "Strings.java:4: error: illegal start of expression" in stderr
    module = project.root / "examples/haskell/Shop/Core/Money.hs"
    good = module.read_text()
    module.write_text(good + "\nbroken = undefinedName\n")
    try:
        stderr = failed_build(project, "//examples/haskell:core")
    finally:
        module.write_text(good)
    assert "Money.hs:46:10: error:" in stderr and "Variable not in scope: undefinedName" in stderr
    project.build("//examples/java:util", "//examples/haskell:core")  # fixed, builds again


def test_a_crashing_backend_is_reported_with_its_log(project: Buck2Project) -> None:
    stderr = failed_build(project, "//faults:crash")
    assert "exited with code 3 before answering" in stderr
    assert "fake_worker: crashing on purpose" in stderr  # the backend's own last words
    assert "retried 1 time(s) on a fresh backend" in stderr
    assert "/backend-python-" in stderr and "runtime log: " in stderr
    assert "timed out" not in stderr  # timed_out_after_s is set for timeouts only


def test_a_timeout_is_reported_as_one(project: Buck2Project) -> None:
    stderr = failed_build(project, "//faults:timeout")
    assert "Command timed out after 2.000s" in stderr  # Buck2's, from timed_out_after_s
    assert "the request ran past its timeout of 2 s" in stderr


def test_a_config_the_daemon_refuses_is_reported_with_the_reason(project: Buck2Project) -> None:
    """The front listens on Buck2's socket before the daemon has seen the config: the
    refusal reaches Buck2 either as the worker's exit (Buck2 had not connected yet) or as
    every request's answer (it had), never as a bare "transport error"."""
    stderr = failed_build(project, "//faults:refused")
    assert 'config key `env` holds "A=B", not a variable name' in stderr
    assert "transport error" not in stderr


def test_an_attribute_the_runtime_would_refuse_fails_analysis_naming_it(
    project: Buck2Project,
) -> None:
    """max_instances = 0 passed analysis, and every action on the tool failed as its
    worker's start did."""
    stderr = failed_build(project, "//faults:bad_attribute")
    assert "worker_tool bad_attribute_worker: max_instances = 0 must be 1 or more" in stderr


def test_remote_settings_the_runtime_would_refuse_fail_analysis_naming_the_key(
    project: Buck2Project,
) -> None:
    """A bearer token over an endpoint without TLS passed analysis, and every action on
    a tool routed remote failed as its worker's start did."""
    stderr = failed_build(
        project,
        "-c", "persistent_workers.routing=remote",
        "-c", "persistent_workers.remote_endpoint=grpc://re.invalid:80",
        "-c", "persistent_workers.remote_credentials_file=/token",
        "//faults:crash",
    )  # fmt: skip
    assert (
        'remote_credentials_file is set but the endpoint "grpc://re.invalid:80" is not TLS'
        in stderr
    )
