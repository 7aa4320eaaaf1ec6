"""The [persistent_workers] settings: allowed values and checks (for worker_settings, which
reads them), and the one key needed before any target can be named: toolchains_cell."""

# Where worker requests go; the runtime's config key `routing` takes the same values.
# local, remote, auto, race: Buck2 runs every action locally, and worker-runtime runs a
# worker request locally or forwards it over REAPI itself. native: Buck2's own RE client
# sends actions to remote persistent workers ([buck2_re_client]).
ROUTINGS = ["local", "remote", "auto", "race", "native"]

# What serves Buck2 on each worker socket; the runtime's config key `server` takes the same
# values (docs/serve.md#the-server-h2-or-grpcio).
SERVERS = ["h2", "grpcio"]

# Every key of the [persistent_workers] section of .buckconfig, with its default and what
# it does: the one definition of them. worker_settings reads all but `runtime` and
# `python` (read where those commands are declared, in the toolchains cell's BUCK file)
# and `toolchains_cell` (read below). docs/settings.md is generated from this table
# (workers_dev/settings_doc.py).
SETTINGS = {
    "enabled": {
        "default": "true",
        "doc": "Whether the execution platform turns persistent workers on (`false`: every worker action runs one-shot, its fallback command).",
    },
    "routing": {
        "default": "local",
        "doc": "Where worker requests go: `local`, `remote`, `auto` (local while a warm local slot is free, else remote), `race` (both; the first result wins), all four through worker-runtime, or `native` (Buck2's own RE client sends each worker action to remote persistent workers, from `[buck2_re_client]`; docs/remote.md).",
    },
    "server": {
        "default": "h2",
        "doc": "What serves Buck2 on each worker socket: `h2` (the runtime's own HTTP/2 server, on its event loop) or `grpcio` (grpcio's asyncio server, which hands every message between its poller thread and the event loop; docs/serve.md).",
    },
    "runtime": {
        "default": ".venv/bin/worker-runtime",
        "doc": "The command every `worker_tool` launches (`toolchains//:worker_runtime`, through `toolchains/worker-runtime-launcher`, which says what to fix when it is missing).",
    },
    "python": {
        "default": "python3",
        "doc": "The Python that runs the toolchains' scripts (the Haskell import scan, on the critical path of every Haskell library); a real interpreter, not a version manager's shim, which costs about 140 ms a start.",
    },
    "toolchains_cell": {
        "default": "toolchains",
        "doc": "The cell holding the toolchain targets the rules default to (`java`, `haskell`, `worker_runtime`, `worker_settings`): another name where these cells are mounted beside Buck2's bundled prelude.",
    },
    "remote_endpoint": {
        "default": "",
        "doc": "The REAPI server of the remote routings, e.g. `grpcs://host:443` or `unix:///path/to/socket`.",
    },
    "remote_instance_name": {
        "default": "",
        "doc": "Its instance name (the tenant).",
    },
    "remote_credentials_file": {
        "default": "",
        "doc": "A file holding the bearer token (TLS only).",
    },
    "remote_tls": {
        "default": "false",
        "doc": "`true` or `false` (a `grpcs://` endpoint is TLS either way).",
    },
    "remote_tls_ca_file": {
        "default": "",
        "doc": "PEM roots to trust instead of the system's (TLS only).",
    },
    "remote_properties": {
        "default": "",
        "doc": "The platform's properties for remote actions: `name=value` pairs separated by commas, e.g. `OSFamily=linux,container-image=docker://img:1`.",
    },
    "remote_fallback_local": {
        "default": "false",
        "doc": "Run a request locally when the remote side fails to run it.",
    },
    "remote_cache": {
        "default": "true",
        "doc": "`false`: remote actions are `do_not_cache`, and the action cache is not asked.",
    },
    "remote_persistent": {
        "default": "true",
        "doc": "`false`: plain actions, which the server runs one-shot.",
    },
}

# The cell holding the toolchain targets the rules default to (java, haskell,
# worker_runtime, worker_settings): `toolchains` here; another name where this prelude is
# mounted beside Buck2's bundled one, whose demo toolchains already define
# `toolchains//:java`.
TOOLCHAINS_CELL = read_root_config("persistent_workers", "toolchains_cell", SETTINGS["toolchains_cell"]["default"])

def toolchain_target(name: str) -> str:
    """The label of toolchain target `name` in [persistent_workers] toolchains_cell.

    Args:
      name: the target's name, e.g. "java".

    Returns:
      The label, e.g. "toolchains//:java".
    """
    return TOOLCHAINS_CELL + "//:" + name

def bool_setting(key: str, value: str) -> bool:
    """Reads a boolean [persistent_workers] value.

    Args:
      key: the key's name in [persistent_workers], for the error message.
      value: the value read with read_root_config.

    Returns:
      The value as a bool: true, 1 or yes; false, 0 or no (any case). Anything else
      fails analysis naming the key.
    """
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    fail("[persistent_workers] " + key + " = " + repr(value) + " is not a boolean: use true or false")

def choice_setting(key: str, value: str, choices: list[str]) -> str:
    """Checks a [persistent_workers] value that must be one of `choices`.

    Args:
      key: the key's name in [persistent_workers], for the error message.
      value: the value read with read_root_config.
      choices: the values allowed.

    Returns:
      The value; anything else fails analysis naming the key.
    """
    if value not in choices:
        fail("[persistent_workers] " + key + " = " + repr(value) + " is not one of " + ", ".join(choices))
    return value

def check_routing(value: str) -> str:
    """Checks a [persistent_workers] routing value (one of ROUTINGS)."""
    return choice_setting("routing", value, ROUTINGS)

def check_server(value: str) -> str:
    """Checks a [persistent_workers] server value (one of SERVERS)."""
    return choice_setting("server", value, SERVERS)

def properties_setting(key: str, value: str) -> dict[str, str]:
    """Reads a [persistent_workers] list of platform properties.

    Args:
      key: the key's name in [persistent_workers], for the error message.
      value: the value read with read_root_config: `name=value` pairs, comma-separated.

    Returns:
      The properties by name; an entry without `=` or with an empty name fails analysis
      naming the key.
    """
    properties = {}
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, item = entry.partition("=")
        if not sep or not name.strip():
            fail("[persistent_workers] " + key + ": " + repr(entry) + " is not name=value")
        properties[name.strip()] = item.strip()
    return properties

# Target schemes gRPC resolves (`scheme:...`), besides grpc://, grpcs:// and a bare
# host:port: worker_runtime/config.py's _GRPC_SCHEMES.
GRPC_SCHEMES = ["dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds", "google-c2p"]

def endpoint_problem(remote: dict[str, typing.Any]) -> str | None:
    """What makes the remote settings unusable, or None.

    The runtime's own check at its start (worker_runtime/config.py's endpoint_problem),
    by the same rules, for a tool whose routing sends requests to the endpoint: every
    action on it would otherwise fail as its worker's start does, far from the
    .buckconfig at fault.

    Args:
      remote: the runtime config's `remote` object (WorkerSettingsInfo.remote).

    Returns:
      The problem, naming the [persistent_workers] key, or None.
    """
    endpoint = remote.get("endpoint", "")
    scheme = endpoint.partition(":")[0]
    if "://" in endpoint and scheme not in ["grpc", "grpcs"] + GRPC_SCHEMES:
        return ("[persistent_workers] remote_endpoint = " + repr(endpoint) + " has a scheme gRPC " +
                "does not know: use grpcs://host:port (TLS), grpc://host:port, unix:///path or host:port")
    target = endpoint
    for scheme in ("grpcs://", "grpc://"):
        if target.startswith(scheme):
            target = target[len(scheme):]
    if not target:
        return "[persistent_workers] remote_endpoint = " + repr(endpoint) + " names no server (grpcs://host:port, say)"
    tls = remote.get("tls", False) or endpoint.startswith("grpcs://")
    for key in ("tls_ca_file", "credentials_file"):
        if remote.get(key) and not tls:
            return ("[persistent_workers] remote_" + key + " is set but the endpoint " + repr(endpoint) +
                    " is not TLS: a bearer token or a CA is used only over TLS; use a grpcs:// " +
                    "endpoint (or set remote_tls = true)")
    return None
