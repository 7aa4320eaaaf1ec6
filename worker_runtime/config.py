"""The runtime's settings: one frozen dataclass, read from a JSON file and overridden by flags.

Every key of the JSON file is a field of ``RuntimeConfig`` (the prelude writes this
file); an unknown key or a value of the wrong type is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from worker_runtime.errors import ConfigError

PROTOCOLS = ("proto", "json")


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings of one ``worker-runtime serve``. See the README's reference for each key."""

    #: The backend command (started with ``--persistent_worker`` appended).
    command: tuple[str, ...] = ()
    #: Wire format spoken with the backend: "proto" or "json".
    protocol: str = "proto"
    #: One backend process takes many requests at once, routed by request_id.
    multiplex: bool = False
    #: Singleplex only: the most backend processes per worker key.
    max_instances: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: Files whose content is part of the worker key (a change starts a new backend).
    tool_inputs: tuple[str, ...] = ()
    #: Names of per-request (Buck2 action) env variables that become part of the worker
    #: key and are set in the backend's environment. All other request env is ignored.
    key_env: tuple[str, ...] = ()
    #: Fixed environment added to every backend's environment.
    env: Mapping[str, str] = field(default_factory=dict)
    #: WorkRequest.verbosity sent with every request.
    verbosity: int = 0
    #: How often a request whose backend died before answering is retried on a fresh one.
    retries: int = 1
    #: Multiplex only: the backend honours cancel requests (else it is killed to cancel).
    cancellable: bool = False
    #: A response that started arriving but stalls this long is taken for garbage.
    frame_stall_timeout_s: float = 5.0
    #: How long a cancelled request may take to be acknowledged before the backend is killed.
    cancel_grace_s: float = 5.0
    #: On SIGTERM, how long in-flight requests may take to finish before they are cancelled.
    shutdown_grace_s: float = 5.0
    #: Where logs go (default: $WORKER_RUNTIME_LOG_DIR, else $XDG_STATE_HOME or
    #: ~/.local/state, then buck2-worker-runtime/logs).
    log_dir: str | None = None
    #: Serve through the per-user daemon that keeps backends warm across Buck2 commands
    #: (false: serve in this process; backends die with it, as with --no-daemon).
    daemon: bool = True
    #: The daemon exits after this long with no Buck2 command attached (daemon-wide:
    #: taken from the front that starts the daemon).
    daemon_idle_timeout_s: float = 3 * 3600.0
    #: A backend process with no request for this long is stopped.
    backend_idle_timeout_s: float = 1800.0
    #: Total resident memory (MiB) of all backends' process trees before idle ones are
    #: stopped, largest first (daemon-wide). Default: half of the machine's memory.
    memory_budget_mb: int | None = None
    #: A backend whose process tree exceeds this (MiB) is recycled after its current request.
    backend_memory_limit_mb: int | None = None
    #: How often the daemon checks idle times and memory.
    reclaim_interval_s: float = 5.0
    #: Timeout of a request that comes without ``timeout_s`` (Buck2 sets none unless the
    #: rule does), so that a backend that never answers cannot hang a build; null: none.
    default_timeout_s: float | None = 7200.0
    #: Where requests go, as the execution platform says: "local", "remote", "auto" (local
    #: when a warm local slot is free, else remote) or "race" (both; the first result wins).
    routing: str = "local"
    #: Remote settings for the other routings: endpoint, instance_name, credentials_file,
    #: tls_ca_file, tls, fallback_local, cache, persistent, properties.
    remote: Mapping[str, Any] = field(default_factory=dict)

    def validated(self) -> RuntimeConfig:
        if not self.command:
            raise ConfigError(
                "no backend command: give it after `--` (worker-runtime serve [options] -- "
                "BACKEND_COMMAND [ARG...]) or as `command` in the --config file"
            )
        if self.multiplex is False and self.cancellable:
            raise ConfigError(
                "`cancellable` needs `multiplex`: only multiplex backends take cancels"
            )
        return self


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"config key `{key}` must be a string, not {json.dumps(value)}")
    return value


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config key `{key}` must be a list of strings, not {json.dumps(value)}")
    return tuple(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"config key `{key}` must be true or false, not {json.dumps(value)}")
    return value


def _int(minimum: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(
                f"config key `{key}` must be an integer >= {minimum}, not {json.dumps(value)}"
            )
        return value

    return check


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(
            f"config key `{key}` must be a number of seconds > 0, not {json.dumps(value)}"
        )
    return float(value)


def _optional_seconds(key: str, value: Any) -> float | None:
    return None if value is None else _seconds(key, value)


ROUTINGS = ("local", "remote", "auto", "race")
REMOTE_KEYS = {
    "endpoint": str,
    "instance_name": str,
    "credentials_file": str,
    "tls_ca_file": str,
    "tls": bool,
    "fallback_local": bool,
    "persistent": bool,
    "cache": bool,
    "properties": dict,
}


def _routing(key: str, value: Any) -> str:
    if value not in ROUTINGS:
        raise ConfigError(f"config key `{key}` must be one of {ROUTINGS}, not {json.dumps(value)}")
    return str(value)


def _remote(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"config key `{key}` must be an object, not {json.dumps(value)}")
    for name, item in value.items():
        expected = REMOTE_KEYS.get(name)
        if expected is None:
            raise ConfigError(
                f"config key `{key}.{name}` is unknown (known: {', '.join(REMOTE_KEYS)})"
            )
        if not isinstance(item, expected):
            raise ConfigError(
                f"config key `{key}.{name}` must be a {expected.__name__}, not {json.dumps(item)}"
            )
    for name, item in value.get("properties", {}).items():
        if not isinstance(item, str) or not name:
            raise ConfigError(
                f"config key `{key}.properties` must map names to strings, not "
                f"{json.dumps(name)}: {json.dumps(item)}"
            )
    return dict(value)


def _protocol(key: str, value: Any) -> str:
    if value not in PROTOCOLS:
        raise ConfigError(f"config key `{key}` must be one of {PROTOCOLS}, not {json.dumps(value)}")
    return str(value)


def _env(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(
            f"config key `{key}` must be an object of strings, not {json.dumps(value)}"
        )
    return dict(value)


def _optional_int(minimum: int) -> Callable[[str, Any], int | None]:
    check = _int(minimum)

    def optional(key: str, value: Any) -> int | None:
        return None if value is None else check(key, value)

    return optional


def _optional_string(key: str, value: Any) -> str | None:
    return None if value is None else _string(key, value)


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "command": _strings,
    "protocol": _protocol,
    "multiplex": _bool,
    "max_instances": _int(1),
    "tool_inputs": _strings,
    "key_env": _strings,
    "env": _env,
    "verbosity": _int(0),
    "retries": _int(0),
    "cancellable": _bool,
    "frame_stall_timeout_s": _seconds,
    "cancel_grace_s": _seconds,
    "shutdown_grace_s": _seconds,
    "log_dir": _optional_string,
    "daemon": _bool,
    "daemon_idle_timeout_s": _seconds,
    "backend_idle_timeout_s": _seconds,
    "memory_budget_mb": _optional_int(1),
    "backend_memory_limit_mb": _optional_int(1),
    "reclaim_interval_s": _seconds,
    "default_timeout_s": _optional_seconds,
    "routing": _routing,
    "remote": _remote,
}
assert set(_CHECKS) == {f.name for f in fields(RuntimeConfig)}


def config_from_mapping(data: Any, source: str = "config") -> RuntimeConfig:
    """Builds a config from a decoded JSON object, checking every key and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a JSON object, not {type(data).__name__}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        check = _CHECKS.get(key)
        if check is None:
            known = ", ".join(sorted(_CHECKS))
            raise ConfigError(f"{source}: unknown config key `{key}` (known keys: {known})")
        values[key] = check(key, value)
    return RuntimeConfig(**values)


def load_config_file(path: str | Path) -> RuntimeConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    return config_from_mapping(data, f"config file {path}")


def config_to_mapping(config: RuntimeConfig) -> dict[str, Any]:
    """The config as the JSON object ``config_from_mapping`` reads (for the daemon hand-off)."""
    out: dict[str, Any] = {}
    for item in fields(RuntimeConfig):
        value = getattr(config, item.name)
        out[item.name] = (
            list(value)
            if isinstance(value, tuple)
            else dict(value)
            if isinstance(value, Mapping)
            else value
        )
    return out


def with_overrides(config: RuntimeConfig, overrides: Mapping[str, Any]) -> RuntimeConfig:
    """Applies flag values (already typed; None means 'not given') over the config."""
    given = {k: v for k, v in overrides.items() if v is not None}
    for key, value in given.items():
        try:
            _CHECKS[key](key, list(value) if isinstance(value, tuple) else value)
        except ConfigError as exc:
            flag = (
                "the command after `--`" if key == "command" else f"flag --{key.replace('_', '-')}"
            )
            raise ConfigError(str(exc).replace(f"config key `{key}`", flag)) from None
    return replace(config, **given)
