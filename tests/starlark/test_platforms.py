"""The execution platforms, the [persistent_workers] settings (read once, by the
worker_settings target), and the routing that worker tools pick up from the execution
platform through select()."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
import starlark as sl

from tests.conftest import REPO_ROOT
from worker_runtime import config as config_module
from worker_runtime.config import REMOTE_ROUTINGS, ROUTINGS, ConfigError, config_from_mapping
from workers_dev.buck2_fake import CELLS, Buck2Fake
from workers_dev.build_runner import worker_settings, worker_tool_targets
from workers_dev.settings_doc import buckconfig_settings

SETTING = 'ConstraintSettingInfo(label = fake_target_label("prelude//platforms:worker_routing"))'


def routing_value(name: str) -> str:
    label = f'fake_target_label("prelude//platforms:routing_{name}")'
    value = f"ConstraintValueInfo(setting = {SETTING}, label = {label})"
    return f"fake_dep({value})"


def platforms_buck(root_config: dict[tuple[str, str], str]) -> dict[str, Any]:
    fake = Buck2Fake(root_config=root_config)
    fake.eval_file(CELLS["prelude"] / "platforms" / "BUCK", "prelude")
    return fake.target_attrs


def analyse_platform(
    root_config: dict[tuple[str, str], str], routing: str, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """The ExecutionPlatformInfo of prelude//platforms:exec_ROUTING as its BUCK file
    declares it, with the settings that worker_settings reads from ``root_config``."""
    fake = Buck2Fake(root_config=root_config)
    attrs = platforms_buck(root_config)[f"exec_{routing}"]
    given = {
        "routing": json.dumps(attrs["routing"]),
        "routing_value": json.dumps(attrs["routing_value"]),
        **(extra or {}),
    }
    targets: dict[str, Any] = {f":routing_{routing}": routing_value(routing)}
    targets["toolchains//:worker_settings"] = worker_settings(fake)
    targets[":linux"] = LINUX
    analysis = fake.analyse(
        "@prelude//platforms:execution_platforms.bzl", "worker_execution_platform",
        f"//platforms:exec_{routing}", given, targets,
    )  # fmt: skip
    platform: dict[str, Any] = analysis.provider("ExecutionPlatformInfo")
    return platform


def platform_dep(routing: str) -> str:
    label = f'fake_target_label("prelude//platforms:exec_{routing}")'
    config = "CommandExecutorConfig(local_enabled = True, remote_enabled = False)"
    empty = "ConfigurationInfo(constraints = {}, values = {})"
    return (
        f"fake_dep(ExecutionPlatformInfo(label = {label}, configuration = {empty}, "
        f"executor_config = {config}))"
    )


def registered(root_config: dict[tuple[str, str], str]) -> list[str]:
    """The labels prelude//platforms:platforms registers, in order."""
    fake = Buck2Fake(root_config=root_config)
    attrs = platforms_buck(root_config)["platforms"]
    targets: dict[str, Any] = {f":exec_{r}": platform_dep(r) for r in ROUTINGS}
    targets["toolchains//:worker_settings"] = worker_settings(fake)
    analysis = fake.analyse(
        "@prelude//platforms:execution_platforms.bzl", "persistent_worker_platforms",
        "//platforms:platforms", {"platforms": json.dumps(attrs["platforms"])}, targets,
    )  # fmt: skip
    return [p["label"] for p in analysis.provider("ExecutionPlatformRegistrationInfo")["platforms"]]


OS_SETTING = 'ConstraintSettingInfo(label = fake_target_label("cfg//os:os"))'
LINUX = f'fake_dep(ConstraintValueInfo(setting = {OS_SETTING}, label = fake_target_label("cfg//os:linux")))'


def test_platform_from_default_config_turns_workers_on_locally() -> None:
    attrs = platforms_buck({})["platforms"]
    assert "routing" not in attrs and "enabled" not in attrs  # read by worker_settings
    platform = analyse_platform({}, "local")
    assert platform["label"] == "root//platforms:exec_local"
    assert platform["executor_config"]["use_persistent_workers"] is True
    assert platform["executor_config"]["local_enabled"] is True
    assert platform["executor_config"]["remote_enabled"] is False
    constraints = platform["configuration"]["constraints"]
    assert list(constraints) == ["prelude//platforms:worker_routing"]
    assert (
        constraints["prelude//platforms:worker_routing"]["label"]
        == "prelude//platforms:routing_local"
    )


@pytest.mark.parametrize("routing", ["remote", "auto", "race"])
def test_forwarding_routings_keep_buck2_local(routing: str) -> None:
    """worker-runtime forwards their remote requests itself: to Buck2 they are local."""
    config = analyse_platform({}, routing)["executor_config"]
    assert config["local_enabled"] is True and config["remote_enabled"] is False


def test_native_platform_is_buck2_remote_execution_with_remote_persistent_workers() -> None:
    settings = {("persistent_workers", "remote_properties"): "OSFamily=linux"}
    config = analyse_platform(settings, "native")["executor_config"]
    assert config["remote_enabled"] is True and config["local_enabled"] is True
    assert config["use_limited_hybrid"] is True  # remote unless the command prefers local
    assert config["use_bazel_protocol_remote_persistent_workers"] is True
    assert config["use_persistent_workers"] is True
    assert config["remote_execution_properties"] == {"OSFamily": "linux"}
    assert config["remote_execution_use_case"] == "buck2-default"
    assert config["remote_cache_enabled"] is True


def test_native_platform_follows_the_remote_cache_fallback_and_persistent_settings() -> None:
    """Routing native read them, checked them and ignored them: remote_cache = false
    still asked and wrote the action cache, remote_persistent = false still sent
    persistent-worker requests."""
    config = analyse_platform({}, "native")["executor_config"]
    assert (
        config["allow_cache_uploads"] is True and config["allow_limited_hybrid_fallbacks"] is False
    )
    settings = {
        ("persistent_workers", "remote_cache"): "false",
        ("persistent_workers", "remote_fallback_local"): "true",
        ("persistent_workers", "remote_persistent"): "false",
    }
    config = analyse_platform(settings, "native")["executor_config"]
    assert config["remote_cache_enabled"] is False and config["allow_cache_uploads"] is False
    assert config["allow_limited_hybrid_fallbacks"] is True
    assert config["use_bazel_protocol_remote_persistent_workers"] is False
    assert config["use_persistent_workers"] is True  # local requests stay warm


def test_native_platform_without_workers_sends_plain_remote_actions() -> None:
    config = analyse_platform({("persistent_workers", "enabled"): "false"}, "native")
    assert config["executor_config"]["remote_enabled"] is True
    assert config["executor_config"]["use_bazel_protocol_remote_persistent_workers"] is False
    assert config["executor_config"]["remote_execution_properties"] == {}


@pytest.mark.parametrize("routing", ROUTINGS)
def test_every_routing_is_registered_the_configured_one_first(routing: str) -> None:
    order = registered({("persistent_workers", "routing"): routing})
    assert order[0] == f"prelude//platforms:exec_{routing}"
    assert sorted(order) == sorted(f"prelude//platforms:exec_{r}" for r in ROUTINGS)


def test_workers_can_be_switched_off() -> None:
    platform = analyse_platform({("persistent_workers", "enabled"): "false"}, "local")
    assert platform["executor_config"]["use_persistent_workers"] is False


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (
            "routing",
            "cloud",
            '[persistent_workers] routing = "cloud" is not one of local, remote, auto, race, native',
        ),
        ("enabled", "maybe", '[persistent_workers] enabled = "maybe" is not a boolean'),
        ("server", "fast", '[persistent_workers] server = "fast" is not one of h2, grpcio'),
    ],
)
def test_bad_setting_is_an_analysis_error_naming_the_key(
    setting: str, value: str, message: str
) -> None:
    with pytest.raises(sl.StarlarkError) as info:
        registered({("persistent_workers", setting): value})
    assert message in str(info.value)


def test_settings_are_read_once_by_the_worker_settings_target() -> None:
    """worker_settings.bzl reads every [persistent_workers] key but the commands of the
    toolchains (runtime, python: toolchains/BUCK) and toolchains_cell, which says where
    worker_settings is; the platform and the worker tools depend on that target."""
    fake = Buck2Fake()
    fake.eval_file(CELLS["prelude"] / "platforms" / "BUCK", "prelude")
    fake.eval_file(CELLS["toolchains"] / "BUCK", "toolchains")
    fake.eval_file(
        CELLS["root"] / "__check__.bzl", "root", 'load("@prelude//:prelude.bzl", "worker_tool")\n'
    )
    readers = {
        key: where
        for (section, key), where in fake.config_reads.items()
        if section == "persistent_workers"
    }
    section = (CELLS["root"] / ".buckconfig").read_text().split("\n[persistent_workers]\n")[1]
    documented = {
        line.split("=")[0].strip()
        for line in section.split("\n[")[0].splitlines()
        if "=" in line and not line.strip().startswith("#")
    }
    assert documented == set(readers)  # every key .buckconfig lists is read, and no other
    assert set(buckconfig_settings()) == documented  # and is defined once, in SETTINGS
    assert readers.pop("toolchains_cell") == {"prelude/utils/settings.bzl"}
    assert readers.pop("runtime") == readers.pop("python") == {"toolchains/BUCK"}
    assert set(readers) == {
        "enabled", "routing", "server", "remote_endpoint", "remote_instance_name",
        "remote_credentials_file", "remote_tls", "remote_tls_ca_file", "remote_properties", "remote_fallback_local",
        "remote_cache", "remote_persistent",
    }  # fmt: skip
    assert all(where == {"prelude/worker/worker_settings.bzl"} for where in readers.values())
    assert fake.target_attrs["worker_settings"]["_impl"] == "_worker_settings_impl"


def analyse_tool(root_config: dict[tuple[str, str], str], constraints: list[str]) -> dict[str, Any]:
    fake = Buck2Fake(root_config=root_config)
    analysis = fake.analyse(
        "@prelude//worker:worker_tool.bzl", "worker_tool", "//tools:w",
        {
            "backend": 'fake_dep(RunInfo(args = cmd_args("w")))',
            "remote_backend": 'fake_dep(RunInfo(args = cmd_args("w-built")))',
        },
        worker_tool_targets(fake),
        constraints=constraints,
    )  # fmt: skip
    config: dict[str, Any] = json.loads(analysis.action("write_json")["content"])
    return config


@pytest.mark.parametrize("routing", ROUTINGS)
def test_worker_tool_picks_the_routing_of_its_execution_platform(routing: str) -> None:
    # The constraint the platform carries is the key the tool's select() matches.
    settings = {}
    if routing in REMOTE_ROUTINGS:
        settings[("persistent_workers", "remote_endpoint")] = "grpc://127.0.0.1:8980"
    platform = analyse_platform(settings, routing)
    constraints = [v["label"] for v in platform["configuration"]["constraints"].values()]
    config = analyse_tool(settings, constraints)
    assert config["routing"] == routing
    config_from_mapping(config).validated()  # what the runtime accepts


@pytest.mark.parametrize("routing", REMOTE_ROUTINGS)
def test_a_remote_routing_without_an_endpoint_is_an_analysis_error(routing: str) -> None:
    """The runtime refuses to start without one: the tool says so during analysis."""
    with pytest.raises(sl.StarlarkError, match=f"routing {routing} sends requests to a remote"):
        analyse_tool({}, [f"prelude//platforms:routing_{routing}"])


def test_remote_settings_reach_the_runtime_config() -> None:
    settings = {
        ("persistent_workers", "remote_endpoint"): "grpcs://re.example.invalid:443",
        ("persistent_workers", "remote_instance_name"): "team-a",
        ("persistent_workers", "remote_credentials_file"): "/home/u/.config/re-token",
        ("persistent_workers", "remote_tls"): "true",
        ("persistent_workers", "remote_tls_ca_file"): "/etc/re/ca.pem",
        ("persistent_workers", "remote_fallback_local"): "true",
        ("persistent_workers", "remote_cache"): "false",
        ("persistent_workers", "remote_properties"): "OSFamily=linux, container-image=docker://x:1",
    }
    config = analyse_tool(settings, ["prelude//platforms:routing_remote"])
    assert config["remote"] == {
        "endpoint": "grpcs://re.example.invalid:443",
        "instance_name": "team-a",
        "credentials_file": "/home/u/.config/re-token",
        "tls_ca_file": "/etc/re/ca.pem",
        "tls": True,
        "fallback_local": True,
        "cache": False,
        "persistent": True,
        "properties": {"OSFamily": "linux", "container-image": "docker://x:1"},
    }
    assert config_from_mapping(config).validated().remote.tls is True


def test_a_malformed_remote_property_is_an_analysis_error_naming_the_key() -> None:
    with pytest.raises(sl.StarlarkError, match=r'remote_properties: "OSFamily" is not name=value'):
        analyse_tool({("persistent_workers", "remote_properties"): "OSFamily"}, [])


def test_bad_remote_tls_is_an_analysis_error_naming_the_key() -> None:
    with pytest.raises(
        sl.StarlarkError, match=r"\[persistent_workers\] remote_tls = \"sometimes\""
    ):
        analyse_tool({("persistent_workers", "remote_tls"): "sometimes"}, [])


@pytest.mark.parametrize(
    ("settings", "message", "runtime_message"),
    [
        (
            {"remote_endpoint": "grpcs://"},
            r"remote_endpoint = \"grpcs://\" names no server",
            "names no server",
        ),
        (
            {"remote_endpoint": "https://re:443"},
            r"remote_endpoint = \"https://re:443\" has a scheme gRPC does not know",
            "has a scheme gRPC does not know",
        ),
        (
            {"remote_endpoint": "grpc://re:80", "remote_credentials_file": "/t"},
            r"remote_credentials_file is set but the endpoint \"grpc://re:80\" is not TLS",
            "`credentials_file` is set but the endpoint 'grpc://re:80' is not TLS",
        ),
        (
            {"remote_endpoint": "unix:///s.sock", "remote_tls_ca_file": "/ca.pem"},
            "remote_tls_ca_file is set but the endpoint",
            "`tls_ca_file` is set but the endpoint",
        ),
    ],
)
@pytest.mark.parametrize("routing", REMOTE_ROUTINGS)
def test_remote_settings_the_runtime_refuses_are_analysis_errors(
    settings: dict[str, str], message: str, runtime_message: str, routing: str
) -> None:
    """The runtime refused them at its start: every action on the tool failed as its
    worker's start did, with a message far from the .buckconfig that caused it. As the
    runtime, only where the routing sends requests to the endpoint."""
    keyed = {("persistent_workers", key): value for key, value in settings.items()}
    with pytest.raises(sl.StarlarkError, match=f"worker_tool .*: .*{message}"):
        analyse_tool(keyed, [f"prelude//platforms:routing_{routing}"])
    local = analyse_tool(keyed, [])
    with pytest.raises(ConfigError, match=runtime_message):
        config_from_mapping({**local, "routing": routing}).validated()
    if "is not TLS" in message:  # TLS makes both usable
        with_tls = {**keyed, ("persistent_workers", "remote_tls"): "true"}
        analyse_tool(with_tls, [f"prelude//platforms:routing_{routing}"])
        config_from_mapping({**analyse_tool(with_tls, []), "routing": routing}).validated()


def test_the_prelude_knows_the_runtimes_grpc_schemes() -> None:
    """prelude/utils/settings.bzl keeps its own copy of the schemes: the same list."""
    text = (REPO_ROOT / "prelude" / "utils" / "settings.bzl").read_text()
    found = re.search(r"^GRPC_SCHEMES = (\[.*\])$", text, re.M)
    assert found, "GRPC_SCHEMES is not one line in prelude/utils/settings.bzl"
    listed = ast.literal_eval(found.group(1))
    assert tuple(listed) == config_module._GRPC_SCHEMES


def test_fake_checks_configuration_providers(tmp_path: Path) -> None:
    fake = Buck2Fake()
    cases = {
        "CommandExecutorConfig(local_enabled = True, remote_enabled = True)": "MissingField",
        "CommandExecutorConfig(local_enabled = True)": "remote_enabled",
        'ConstraintSettingInfo(label = "//p:s")': "must be a TargetLabel",
        "ConfigurationInfo(constraints = {}, values = {'nodot': 'x'})": "section.key",
        'select({"DEFAULT": 1, 2: 3})': "keys must be strings",
    }
    for expression, message in cases.items():
        assert message in fake.error_of(expression, tmp_path), expression


def test_routing_select_names_the_cell_the_prelude_is_mounted_under() -> None:
    fake = Buck2Fake()
    module = fake.eval_file(
        CELLS["root"] / "__check__.bzl", "root",
        'load("@prelude//:prelude.bzl", "routing_select")\n'
        "def keys():\n"
        '    return routing_select("workers")\n',
    )  # fmt: skip
    choices = module.call("keys")["choices"]  # type: ignore[index]
    assert (
        choices["workers//platforms:routing_remote"] == "remote" and choices["DEFAULT"] == "local"
    )


def test_read_root_config_is_refused_during_analysis(tmp_path: Path) -> None:
    (tmp_path / "rules.bzl").write_text(
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        '    read_root_config("persistent_workers", "routing")\n'
        "    return [DefaultInfo()]\n"
        "r = rule(impl = _impl, attrs = {})\n"
    )
    fake = Buck2Fake()
    module = fake.eval_file(
        tmp_path / "h.bzl",
        "root",
        'load(":rules.bzl", "r")\ndef go():\n    return fake_analyse(r, "//p:t", {}, {})\n',
    )
    fake._analysing = True
    with pytest.raises(sl.StarlarkError, match="unavailable during analysis"):
        module.call("go")


def test_extra_constraints_join_the_routing_constraint() -> None:
    platform = analyse_platform({}, "local", {"extra_constraints": json.dumps([":linux"])})
    assert set(platform["configuration"]["constraints"]) == {
        "prelude//platforms:worker_routing",
        "cfg//os:os",
    }


def test_every_cell_has_a_target_platform() -> None:
    """Under Buck2's <unspecified> platform a worker_tool's routing select() fails, so
    .buckconfig gives every cell's targets prelude//platforms:default."""
    config = (CELLS["root"] / ".buckconfig").read_text()
    (spec,) = [
        line.split("=", 1)[1].split()
        for line in config.splitlines()
        if line.strip().startswith("target_platform_detector_spec")
    ]
    assert spec == [
        f"target:{cell}//...->prelude//platforms:default"
        for cell in ("root", "toolchains", "prelude")
    ]
    attrs = platforms_buck({})
    assert attrs["default"]["_impl"] == "_target_platform_impl"
    analysis = Buck2Fake().analyse(
        "@prelude//platforms:target_platform.bzl", "target_platform", "//platforms:default", {}
    )
    platform = analysis.provider("PlatformInfo")
    assert platform["configuration"]["constraints"] == {}
    assert "platforms" in platform["label"] and "default" in platform["label"]


def test_fake_checks_that_a_platform_names_itself(tmp_path: Path) -> None:
    (tmp_path / "rules.bzl").write_text(
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        '    return [DefaultInfo(), PlatformInfo(label = "root//elsewhere:p", '
        "configuration = ConfigurationInfo(constraints = {}, values = {}))]\n"
        "r = rule(impl = _impl, attrs = {}, is_configuration_rule = True)\n"
    )
    harness = 'load(":rules.bzl", "r")\ndef go():\n    return fake_analyse(r, "//p:t", {}, {})\n'
    module = Buck2Fake().eval_file(tmp_path / "h.bzl", "root", harness)
    with pytest.raises(sl.StarlarkError, match="should name the platform target itself"):
        module.call("go")


def test_the_routings_are_one_list_in_each_language() -> None:
    """Starlark's ROUTINGS (the constraint values, the settings check) and the runtime's
    are the same list."""
    routings = Buck2Fake().value_of(
        CELLS["prelude"] / "utils" / "settings.bzl", "prelude", "ROUTINGS"
    )
    assert isinstance(routings, list) and tuple(routings) == ROUTINGS
    attrs = platforms_buck({})
    assert {f"routing_{r}" for r in ROUTINGS} <= set(attrs)
    assert {f"exec_{r}" for r in ROUTINGS} <= set(attrs)
    assert attrs["platforms"]["platforms"] == {r: f":exec_{r}" for r in ROUTINGS}
