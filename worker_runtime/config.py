"""The runtime's settings: one frozen dataclass, read from a JSON file and overridden by flags.

Every key of the JSON file is a field of ``RuntimeConfig`` (the prelude writes this
file); an unknown key or a value of the wrong type is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from worker_runtime.errors import ConfigError
from worker_runtime.quick_json import DuplicateKeyError, loads_unique

PROTOCOLS = ("proto", "json")
#: What serves Buck2's gRPC on the worker socket (worker_runtime/buck2/).
SERVERS = ("h2", "grpcio")


def doc(text: str, default: str = "") -> dict[str, str]:
    """A setting's documentation, kept on its field: docs/settings.md is made from it.
    ``default`` describes a default that is computed rather than written."""
    return {"doc": text, "default": default}


@dataclass(frozen=True)
class RemoteConfig:
    """Where and how requests go for routings `remote`, `auto` and `race`."""

    endpoint: str = field(
        default="",
        metadata=doc(
            "The REAPI server: `grpcs://host:port` (TLS), `grpc://host:port`, `unix:///path` "
            "or a bare `host:port` (or another target gRPC resolves: `dns:`, `ipv4:`, ...). "
            "Needed by routings `remote`, `auto` and `race`: without one, or with a scheme "
            "gRPC does not know, the runtime refuses to start."
        ),
    )
    instance_name: str = field(
        default="",
        metadata=doc("The REAPI instance name (the tenant on a shared engine)."),
    )
    credentials_file: str = field(
        default="",
        metadata=doc(
            "A file holding a bearer token, sent as `authorization: Bearer <token>` on every "
            "call and re-read when it changes. TLS only."
        ),
    )
    tls_ca_file: str = field(
        default="",
        metadata=doc("PEM roots to verify the server with (default: the system's). TLS only."),
    )
    tls: bool = field(
        default=False,
        metadata=doc("Use TLS even though the endpoint is not `grpcs://`."),
    )
    fallback_local: bool = field(
        default=False,
        metadata=doc(
            "When the remote side fails to run a request (unreachable, refused, a server "
            "fault), run it on a local backend instead, with a note in its output."
        ),
    )
    persistent: bool = field(
        default=True,
        metadata=doc(
            "Send actions by the remote persistent worker convention (tool inputs marked, "
            "a `persistentWorkerKey` property), so the executor runs them on warm workers; "
            "false: plain one-shot actions."
        ),
    )
    cache: bool = field(
        default=True,
        metadata=doc("Let the action cache answer (and store) results; false: `do_not_cache`."),
    )
    properties: Mapping[str, str] = field(
        default_factory=dict,
        metadata=doc(
            "Platform properties added to every action (names reserved by the convention are "
            "ignored)."
        ),
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings of one ``worker-runtime serve``; docs/settings.md is generated from the
    ``doc`` of each field."""

    command: tuple[str, ...] = field(
        default=(),
        metadata=doc("The backend command (started with ``--persistent_worker`` appended)."),
    )
    protocol: str = field(
        default="proto", metadata=doc('Wire format spoken with the backend: "proto" or "json".')
    )
    multiplex: bool = field(
        default=False,
        metadata=doc("One backend process takes many requests at once, routed by request_id."),
    )
    max_instances: int = field(
        default_factory=lambda: os.cpu_count() or 1,
        metadata=doc(
            "Singleplex only: the most backend processes per worker key.", "the number of CPUs"
        ),
    )
    tool_inputs: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Files whose content is part of the worker key (a change starts a new backend)."
        ),
    )
    key_env: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Names of per-request (Buck2 action) env variables that become part of the worker key and are set in the backend's environment. All other request env is ignored."
        ),
    )
    env: Mapping[str, str] = field(
        default_factory=dict,
        metadata=doc("Fixed environment added to every backend's environment."),
    )
    verbosity: int = field(
        default=0, metadata=doc("WorkRequest.verbosity sent with every request.")
    )
    retries: int = field(
        default=1,
        metadata=doc(
            "How often a request whose backend died before answering is retried on a fresh one."
        ),
    )
    cancellable: bool = field(
        default=False,
        metadata=doc(
            "Multiplex only: the backend honours cancel requests (else it is killed to cancel)."
        ),
    )
    frame_stall_timeout_s: float = field(
        default=5.0,
        metadata=doc(
            "A response that started arriving but stalls this long is taken for garbage (and its backend discarded)."
        ),
    )
    max_response_mb: int = field(
        default=256,
        metadata=doc(
            "The largest response a backend may write (MiB): a larger one is refused as it arrives, as a protocol error, and the backend discarded, so that a runaway backend cannot take the daemon's memory (and every warm backend with it)."
        ),
    )
    cancel_grace_s: float = field(
        default=5.0,
        metadata=doc(
            "How long a cancelled request may take to be acknowledged before the backend is killed."
        ),
    )
    shutdown_grace_s: float = field(
        default=5.0,
        metadata=doc(
            "On SIGTERM, how long in-flight requests may take to finish before they are cancelled (with the daemon, daemon-wide: taken from the front that starts it)."
        ),
    )
    log_dir: str | None = field(
        default=None,
        metadata=doc(
            "Where logs go (default: $WORKER_RUNTIME_LOG_DIR, else $XDG_STATE_HOME or ~/.local/state, then buck2-worker-runtime/logs). Daemon-wide: taken from the front that starts the daemon; a change reaches a running daemon once it is restarted (`worker-runtime stop`)."
        ),
    )
    server: str = field(
        default="h2",
        metadata=doc(
            'What serves Buck2 on the worker socket: "h2" (the runtime\'s own HTTP/2 server, on its event loop) or "grpcio" (grpcio\'s asyncio server, which hands every message between its poller thread and the event loop).'
        ),
    )
    daemon: bool = field(
        default=True,
        metadata=doc(
            "Serve through the per-user daemon that keeps backends warm across Buck2 commands (false: serve in this process; backends die with it, as with --no-daemon)."
        ),
    )
    daemon_idle_timeout_s: float = field(
        default=3 * 3600.0,
        metadata=doc(
            "The daemon exits after this long with no Buck2 command attached (daemon-wide: taken from the front that starts the daemon)."
        ),
    )
    backend_idle_timeout_s: float = field(
        default=1800.0, metadata=doc("A backend process with no request for this long is stopped.")
    )
    memory_budget_mb: int | None = field(
        default=None,
        metadata=doc(
            "Total resident memory (MiB) of all backends' process trees before idle ones are stopped, largest first (daemon-wide). Default: half of the machine's memory."
        ),
    )
    backend_memory_limit_mb: int | None = field(
        default=None,
        metadata=doc(
            "A backend whose process tree exceeds this (MiB) is recycled after its current request."
        ),
    )
    reclaim_interval_s: float = field(
        default=5.0,
        metadata=doc(
            "How often the daemon checks idle times, memory and log sizes (daemon-wide, taken from the front that starts the daemon)."
        ),
    )
    log_cap_mb: int = field(
        default=16,
        metadata=doc(
            "Each of the daemon's log files (runtime.log, each backend's stderr log) is cut back once it passes this many MiB: its latest part moves to ``<name>.1`` and the file starts afresh (daemon-wide; backend logs are checked every ``reclaim_interval_s``)."
        ),
    )
    default_timeout_s: float | None = field(
        default=7200.0,
        metadata=doc(
            "Timeout of a request that comes without ``timeout_s`` (Buck2 sets none unless the rule does), so that a backend that never answers cannot hang a build; null: none."
        ),
    )
    routing: str = field(
        default="local",
        metadata=doc(
            'Where requests go, as the execution platform says: "local", "remote", "auto" (local when a warm local slot is free, else remote), "race" (both; the first result wins) or "native" (Buck2 sends remote actions itself; what reaches the runtime runs local).'
        ),
    )
    remote: RemoteConfig = field(
        default_factory=RemoteConfig,
        metadata=doc(
            "Remote settings for the routings `remote`, `auto` and `race`: a JSON object of the keys in the next table."
        ),
    )

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
        if self.routing in REMOTE_ROUTINGS:
            _check_endpoint(self.routing, self.remote.endpoint)
            problem = endpoint_problem(
                self.remote.endpoint,
                self.remote.tls,
                self.remote.tls_ca_file,
                self.remote.credentials_file,
            )
            if problem is not None:
                raise ConfigError(problem)
        return self


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"config key `{key}` must be a string, not {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A value as JSON for an error message, cut short (a 4,000-digit number, say)."""
    return _cut(json.dumps(value))


#: JSON's names for the Python types a decoded config holds (error messages).
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number",
               dict: "object", list: "array", type(None): "null"}  # fmt: skip


def _json_type(kind: type) -> str:
    return _JSON_TYPES.get(kind, kind.__name__)


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _cut(text: str) -> str:
    """``text`` (a key as given, a value as JSON) cut short for an error message."""
    return text if len(text) <= 80 else f"{text[:77]}..."


def _choices(names: tuple[str, ...]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config key `{key}` must be a list of strings, not {_shown(value)}")
    if any("\0" in v for v in value):
        raise ConfigError(f"config key `{key}` holds a NUL character, which no argument can")
    return tuple(value)


def _command(key: str, value: Any) -> tuple[str, ...]:
    command = _strings(key, value)
    if command and not command[0]:
        raise ConfigError(f"config key `{key}` starts with an empty program name")
    return command


def _names(key: str, value: Any) -> tuple[str, ...]:
    """Environment variable names: not empty, no '=' (it ends a name) and no NUL."""
    names = _strings(key, value)
    for name in names:
        if not name or "=" in name:
            raise ConfigError(f"config key `{key}` holds {_shown(name)}, not a variable name")
    return names


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"config key `{key}` must be true or false, not {_shown(value)}")
    return value


def _int(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise ConfigError(
                f"config key `{key}` must be an integer {bounds}, not {_shown(value)}"
            )
        return value

    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    check.bounds = bounds  # type: ignore[attr-defined]
    return check


#: The longest duration a setting takes (about 31 years): past it a remote action's
#: timeout (a protobuf Duration) or a timer overflows.
MAX_SECONDS = 1e9


def _seconds_at_least(minimum: float) -> Callable[[str, Any], float]:
    """``_seconds``, and at least ``minimum`` (a sweep of /proc back to back kept a CPU busy)."""

    def check(key: str, value: Any) -> float:
        seconds = _seconds(key, value)
        if seconds < minimum:
            raise ConfigError(
                f"config key `{key}` must be at least {minimum:g} s, not {_shown(value)}"
            )
        return seconds

    check.bounds = f">= {minimum:g}"  # type: ignore[attr-defined]
    return check


def _seconds(key: str, value: Any) -> float:
    # Python's JSON reader takes NaN and Infinity: a NaN timer fires at once, an infinite
    # one overflows where a whole number of seconds is needed.
    # (An int is compared exactly: math.isfinite of one past a float's range raises.)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
        or not 0 < value <= MAX_SECONDS
    ):
        raise ConfigError(
            f"config key `{key}` must be a finite number of seconds > 0 (at most "
            f"{MAX_SECONDS:.0e}), not {_shown(value)}"
        )
    return float(value)


def _optional_seconds(key: str, value: Any) -> float | None:
    return None if value is None else _seconds(key, value)


#: "native": Buck2 itself sends remote actions to remote persistent workers (its RE client,
#: the execution platform's `use_bazel_protocol_remote_persistent_workers`), so what
#: reaches the runtime is what Buck2 chose to run locally: served as `local`.
ROUTINGS = ("local", "remote", "auto", "race", "native")
REMOTE_KEYS: dict[str, type] = {
    item.name: dict if item.name == "properties" else type(getattr(RemoteConfig(), item.name))
    for item in fields(RemoteConfig)
}


#: The routings that send requests to the remote endpoint (all, or some of them).
REMOTE_ROUTINGS = ("remote", "auto", "race")
#: Target schemes gRPC resolves (``scheme:...``), besides the project's ``grpc://`` and
#: ``grpcs://`` and a bare ``host:port``.
_GRPC_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds", "google-c2p")


def _check_endpoint(routing: str, endpoint: str) -> None:
    """An endpoint routing ``routing`` can use: checked at the start, so that a settings
    mistake is one clear error there, not every request failing as a bad request (which
    `fallback_local` and `race` do not fall back from)."""
    if not endpoint:
        raise ConfigError(
            f"routing `{routing}` needs a remote endpoint ([persistent_workers] remote_endpoint, "
            "or `remote.endpoint` in the config: the REAPI server, e.g. grpcs://host:443 or "
            "unix:///path/to/socket); set one, or use routing `local`"
        )
    scheme = endpoint.partition(":")[0]
    if "://" in endpoint and scheme not in ("grpc", "grpcs", *_GRPC_SCHEMES):
        raise ConfigError(
            f"the remote endpoint {endpoint!r} has a scheme gRPC does not know: use "
            "grpcs://host:port (TLS), grpc://host:port, unix:///path or host:port"
        )


def endpoint_problem(endpoint: str, tls: bool, ca_file: str, credentials_file: str) -> str | None:
    """What makes these remote settings unusable, or None: checked at the start (here)
    and where a channel is made (remote/channels.py), by the same words."""
    target = endpoint.removeprefix("grpcs://").removeprefix("grpc://")
    if not target:
        return f"the remote endpoint {endpoint!r} names no server (grpcs://host:port, say)"
    if (ca_file or credentials_file) and not (endpoint.startswith("grpcs://") or tls):
        which = "tls_ca_file" if ca_file else "credentials_file"
        return (
            f"`{which}` is set but the endpoint {endpoint!r} is not TLS: a bearer token or a "
            "CA is used only over TLS; use a grpcs:// endpoint (or set tls to true)"
        )
    return None


def _routing(key: str, value: Any) -> str:
    if value not in ROUTINGS:
        raise ConfigError(
            f"config key `{key}` must be one of {_choices(ROUTINGS)}, not {_shown(value)}"
        )
    return str(value)


def _remote(key: str, value: Any) -> RemoteConfig:
    if not isinstance(value, dict):
        raise ConfigError(f"config key `{key}` must be an object, not {_shown(value)}")
    for name, item in value.items():
        expected = REMOTE_KEYS.get(name)
        if expected is None:
            raise ConfigError(
                f"config key `{key}.{_cut(name)}` is unknown (known: {', '.join(REMOTE_KEYS)})"
            )
        if not isinstance(item, expected):
            raise ConfigError(
                f"config key `{key}.{name}` must be {_a(_json_type(expected))}, not {_shown(item)}"
            )
    for name, item in value.get("properties", {}).items():
        if not isinstance(item, str) or not name:
            raise ConfigError(
                f"config key `{key}.properties` must map names to strings, not "
                f"{_shown(name)}: {_shown(item)}"
            )
    named = [
        *value.items(),
        *((f"properties.{n}", v) for n, v in value.get("properties", {}).items()),
    ]
    for name, item in named:
        if isinstance(item, str) and "\0" in name + item:
            raise ConfigError(f"config key `{key}.{name}` holds a NUL character: {_shown(item)}")
    return RemoteConfig(**value)


def _protocol(key: str, value: Any) -> str:
    if value not in PROTOCOLS:
        raise ConfigError(
            f"config key `{key}` must be one of {_choices(PROTOCOLS)}, not {_shown(value)}"
        )
    return str(value)


def _server(key: str, value: Any) -> str:
    if value not in SERVERS:
        raise ConfigError(
            f"config key `{key}` must be one of {_choices(SERVERS)}, not {_shown(value)}"
        )
    return str(value)


def _env(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"config key `{key}` must be an object of strings, not {_shown(value)}")
    _names(key, list(value))
    if any("\0" in v for v in value.values()):
        raise ConfigError(f"config key `{key}` holds a NUL character, which no value can")
    return dict(value)


def _optional_int(minimum: int) -> Callable[[str, Any], int | None]:
    check = _int(minimum)

    def optional(key: str, value: Any) -> int | None:
        return None if value is None else check(key, value)

    optional.bounds = check.bounds  # type: ignore[attr-defined]
    return optional


def _optional_path(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if "\0" in _string(key, value):
        raise ConfigError(
            f"config key `{key}` holds a NUL character, which no path can: {_shown(value)}"
        )
    return str(value)


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "command": _command,
    "protocol": _protocol,
    "server": _server,
    "multiplex": _bool,
    "max_instances": _int(1),
    "tool_inputs": _strings,
    "key_env": _names,
    "env": _env,
    "verbosity": _int(0, (1 << 31) - 1),  # WorkRequest.verbosity is an int32
    "retries": _int(0, 100),
    "cancellable": _bool,
    "frame_stall_timeout_s": _seconds_at_least(0.1),
    "max_response_mb": _int(1, 2048),
    "cancel_grace_s": _seconds,
    "shutdown_grace_s": _seconds,
    "log_dir": _optional_path,
    "daemon": _bool,
    "daemon_idle_timeout_s": _seconds,
    "backend_idle_timeout_s": _seconds,
    "memory_budget_mb": _optional_int(1),
    "backend_memory_limit_mb": _optional_int(1),
    "reclaim_interval_s": _seconds_at_least(0.1),
    "log_cap_mb": _int(1),
    "default_timeout_s": _optional_seconds,
    "routing": _routing,
    "remote": _remote,
}
assert set(_CHECKS) == {f.name for f in fields(RuntimeConfig)}


def setting_bounds(key: str) -> str | None:
    """The range a numeric setting's check allows beyond its type (``>= 1``), or None."""
    return getattr(_CHECKS[key], "bounds", None)


def config_from_mapping(data: Any, source: str = "config") -> RuntimeConfig:
    """Builds a config from a decoded JSON object, checking every key and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a JSON object, not {_a(_json_type(type(data)))}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        check = _CHECKS.get(key)
        if check is None:
            known = ", ".join(sorted(_CHECKS))
            raise ConfigError(f"{source}: unknown config key `{_cut(key)}` (known keys: {known})")
        values[key] = check(key, value)
    return RuntimeConfig(**values)


def load_config_file(path: str | Path) -> RuntimeConfig:
    if str(path) == "":  # Path("") is the current directory
        raise ConfigError(
            "--config names no file (an empty path: is the variable that sets it unset?)"
        )
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason})") from None
    try:
        data = loads_unique(text)  # as the front's quick read takes it
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    except DuplicateKeyError as exc:  # json.loads would take the last value, unsaid
        raise ConfigError(f"config file {path}: the {exc}: keep one") from None
    except (ValueError, RecursionError) as exc:  # a number of 4,300+ digits, deep nesting
        raise ConfigError(f"config file {path} cannot be read as JSON: {exc}") from None
    return config_from_mapping(data, f"config file {path}")


def config_to_mapping(config: RuntimeConfig) -> dict[str, Any]:
    """The config as the JSON object ``config_from_mapping`` reads (for the daemon hand-off)."""
    out: dict[str, Any] = {}
    for item in fields(RuntimeConfig):
        value = getattr(config, item.name)
        if isinstance(value, RemoteConfig):
            value = {f.name: getattr(value, f.name) for f in fields(RemoteConfig)}
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
