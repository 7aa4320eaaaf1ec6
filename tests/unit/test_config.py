"""Config file parsing: every key checked, unknown keys and bad values named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker_runtime.config import (
    RuntimeConfig,
    config_from_mapping,
    load_config_file,
    with_overrides,
)
from worker_runtime.entry import plain_config_file
from worker_runtime.errors import ConfigError


def test_full_config_round_trip(tmp_path: Path) -> None:
    data = {
        "command": ["tool", "--flag"],
        "protocol": "json",
        "multiplex": True,
        "cancellable": True,
        "max_instances": 3,
        "tool_inputs": ["tool"],
        "key_env": ["LANG"],
        "env": {"A": "b"},
        "verbosity": 10,
        "retries": 0,
        "frame_stall_timeout_s": 1,
        "cancel_grace_s": 2.5,
        "shutdown_grace_s": 3,
        "log_dir": "/tmp/x",
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    config = load_config_file(path).validated()
    assert config.command == ("tool", "--flag")
    assert config.protocol == "json" and config.multiplex and config.cancellable
    assert (
        config.max_instances == 3 and config.key_env == ("LANG",) and dict(config.env) == {"A": "b"}
    )
    assert config.cancel_grace_s == 2.5 and config.retries == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"protocl": "json"}, "unknown config key `protocl`"),
        ({"protocol": "xml"}, "`protocol` must be one of"),
        ({"max_instances": 0}, "`max_instances` must be an integer >= 1"),
        ({"max_instances": "2"}, "`max_instances` must be an integer"),
        ({"max_response_mb": 0}, "`max_response_mb` must be an integer from 1 to 2048"),
        # math.isfinite of an int past a float's range raised OverflowError: a traceback.
        (
            {"backend_idle_timeout_s": 10**400},
            r"`backend_idle_timeout_s` must be a finite .*\.\.\.$",
        ),
        ({"env": {"": "x"}}, '`env` holds "", not a variable name'),
        ({"env": {"A=B": "x"}}, '`env` holds "A=B", not a variable name'),
        ({"env": {"A": "x\0y"}}, "`env` holds a NUL character"),
        ({"key_env": ["HOME", ""]}, '`key_env` holds "", not a variable name'),
        ({"command": ["", "x"]}, "`command` starts with an empty program name"),
        ({"command": ["tool", "a\0b"]}, "`command` holds a NUL character"),
        ({"max_response_mb": 4096}, "`max_response_mb` must be an integer from 1 to 2048"),
        # WorkRequest.verbosity is an int32: past it, every request failed as a bug
        ({"verbosity": 1 << 31}, "`verbosity` must be an integer from 0 to 2147483647"),
        ({"multiplex": "yes"}, "`multiplex` must be true or false"),
        ({"command": "tool"}, "`command` must be a list of strings"),
        ({"env": {"A": 1}}, "`env` must be an object of strings"),
        ({"frame_stall_timeout_s": 0}, "`frame_stall_timeout_s` must be a finite number"),
        # Python's JSON reader takes these: a NaN timer fires at once, Infinity overflows.
        ({"frame_stall_timeout_s": float("nan")}, "`frame_stall_timeout_s` must be a finite"),
        ({"default_timeout_s": float("inf")}, "`default_timeout_s` must be a finite number"),
        ({"default_timeout_s": 1e20}, r"`default_timeout_s` must be .* \(at most 1e\+09\)"),
        ([1], "must hold a JSON object"),
        ({"routing": "cloud"}, "`routing` must be one of"),
        ({"remote": {"endpoint": 5}}, "`remote.endpoint` must be a string, not 5"),
        ({"remote": {"properties": {"OSFamily": 1}}}, "`remote.properties` must map names"),
        ({"remote": {"properties": ["x"]}}, "`remote.properties` must be an object"),
        ({"remote": {"port": 5}}, "`remote.port` is unknown"),
        # Each failed later, where it could not be told as well (or not at all).
        ({"log_dir": "a\0b"}, "`log_dir` holds a NUL character"),
        ({"remote": {"endpoint": "grpcs://h\0:1"}}, "`remote.endpoint` holds a NUL"),
        (
            {"remote": {"properties": {"OSFamily": "Li\0nux"}}},
            "`remote.properties.OSFamily` holds a NUL",
        ),
        ({"retries": 10**9}, "`retries` must be an integer from 0 to 100"),
        ({"reclaim_interval_s": 1e-300}, "`reclaim_interval_s` must be at least 0.1 s"),
        # Errors name JSON's types and values, and cut a huge value short.
        ([1], "must hold a JSON object, not an array"),
        ({"routing": "x" * 10_000}, r'`routing` must be one of "local", .*, not "x{76}\.\.\.$'),
        ({"remote": {"tls": "yes"}}, '`remote.tls` must be a boolean, not "yes"'),
        ({"k" * 500: 1}, r"unknown config key `k{77}\.\.\.` \(known keys"),
        # Any response written in two reads (past 64 KiB) would have been garbage.
        ({"frame_stall_timeout_s": 0.001}, "`frame_stall_timeout_s` must be at least 0.1 s"),
    ],
)
def test_bad_values_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(data)


def test_flags_override_file() -> None:
    base = config_from_mapping({"protocol": "json", "max_instances": 2, "command": ["a"]})
    merged = with_overrides(base, {"protocol": "proto", "max_instances": None, "command": ("b",)})
    assert merged.protocol == "proto" and merged.max_instances == 2 and merged.command == ("b",)


def test_missing_command_and_cancellable_without_multiplex() -> None:
    with pytest.raises(ConfigError, match="no backend command"):
        RuntimeConfig().validated()
    with pytest.raises(ConfigError, match="`cancellable` needs `multiplex`"):
        RuntimeConfig(command=("a",), cancellable=True).validated()


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config_file(bad)


def test_nan_and_infinity_in_a_config_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    for text in ('{"cancel_grace_s": NaN}', '{"default_timeout_s": Infinity}'):
        path.write_text(text)
        with pytest.raises(ConfigError, match="must be a finite number of seconds > 0"):
            load_config_file(path)


@pytest.mark.parametrize("routing", ["remote", "auto", "race"])
def test_a_remote_routing_without_an_endpoint_is_refused_at_the_start(routing: str) -> None:
    """Not at each request, as a bad request that `fallback_local` and `race` do not fall
    back from."""
    with pytest.raises(ConfigError, match=f"routing `{routing}` needs a remote endpoint"):
        config_from_mapping({"command": ["a"], "routing": routing}).validated()
    for local in ("local", "native"):
        config_from_mapping({"command": ["a"], "routing": local}).validated()


@pytest.mark.parametrize(
    "endpoint",
    ["grpcs://re.example:443", "grpc://127.0.0.1:8980", "unix:///run/re.sock", "unix:rel.sock",
     "dns:///re.example:443", "xds:///re.example", "re.example:443", "127.0.0.1:1"],
)  # fmt: skip
def test_endpoints_grpc_understands_are_taken(endpoint: str) -> None:
    remote = {"endpoint": endpoint}
    config_from_mapping({"command": ["a"], "routing": "remote", "remote": remote}).validated()


@pytest.mark.parametrize(
    ("remote", "message"),
    [
        ({"endpoint": "grpcs://"}, "'grpcs://' names no server"),
        (
            {"endpoint": "grpc://re.example:1", "credentials_file": "/tmp/token"},
            r"`credentials_file` is set but the endpoint 'grpc://re\.example:1' is not TLS",
        ),
        ({"endpoint": "re.example:1", "tls_ca_file": "/tmp/ca.pem"}, "`tls_ca_file` is set"),
    ],
)
def test_remote_settings_no_channel_can_use_are_refused_at_the_start(
    remote: dict[str, str], message: str
) -> None:
    """They were taken, and every request failed when its channel was made: under
    `fallback_local` each then ran locally with a note, under `race` the local side won."""
    data = {"command": ["a"], "routing": "remote", "remote": {**remote, "fallback_local": True}}
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(data).validated()
    tls = {**remote, "tls": True}
    if remote["endpoint"] != "grpcs://":  # over TLS both files are used
        config_from_mapping({"command": ["a"], "routing": "remote", "remote": tls}).validated()


def test_an_endpoint_with_an_unknown_scheme_is_refused() -> None:
    remote = {"endpoint": "https://re.example:443"}
    with pytest.raises(ConfigError, match=r"'https://re\.example:443' has a scheme gRPC does not"):
        config_from_mapping({"command": ["a"], "routing": "race", "remote": remote}).validated()


def test_a_config_file_nested_too_deep_is_one_clear_error(tmp_path: Path) -> None:
    """The front's quick read let the RecursionError through: a traceback, even with the
    daemon turned off."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000)
    assert plain_config_file(str(path)) is None  # the full check then says why
    with pytest.raises(ConfigError, match="cannot be read as JSON"):
        load_config_file(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b'{"backend_idle_timeout_s": ' + b"9" * 5000 + b"}", "cannot be read as JSON"),
    ],
)
def test_a_config_file_python_cannot_read_is_a_clear_error(
    tmp_path: Path, data: bytes, message: str
) -> None:
    """Each raised an exception the loader did not catch: a traceback and exit 1."""
    path = tmp_path / "c.json"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        load_config_file(path)


@pytest.mark.parametrize(
    "text",
    [
        '{"command": ["a"], "daemon": false, "daemon": true}',
        '{"command": ["a"], "env": {"A": "1", "A": "2"}}',
        '{"command": ["a"], "remote": {"properties": {"OSFamily": "x", "OSFamily": "y"}}}',
    ],
)
def test_a_key_set_twice_in_a_config_file_is_refused(tmp_path: Path, text: str) -> None:
    """Both reads took the last value without a word (`"daemon": false` then `true` ran
    the daemon): the front's quick read hands the file to the full check, which says so."""
    path = tmp_path / "c.json"
    path.write_text(text)
    assert plain_config_file(str(path)) is None
    with pytest.raises(ConfigError, match=r"is set twice in one object: keep one"):
        load_config_file(path)
