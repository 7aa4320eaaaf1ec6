"""The worker_tool rule: a backend that speaks Bazel's worker protocol, run warm by worker-runtime."""

load("//utils:settings.bzl", "ROUTINGS", "bool_setting", "check_routing", "properties_setting", "toolchain_target")
load("//worker:providers.bzl", "WorkerToolInfo")

def routing_select(cell: str = "") -> typing.Any:
    """The routing of the execution platform a worker tool is configured for.

    Tools are exec deps, so this select() resolves against the execution platform's
    constraints. As `worker_tool`'s default its keys are cell-relative
    (`//platforms:routing_local`): Buck2 resolves an attribute default in the cell of the
    .bzl file that declares it, so they name this cell under whatever name it is mounted.
    In a BUCK file labels resolve in the BUCK file's cell, so name this cell there.

    Args:
      cell: "" for the default; in a BUCK file, the name this cell is mounted under, as in
        `routing = routing_select("workers")`.

    Returns:
      A select() giving "local", "remote", "auto" or "race".
    """
    choices = {"DEFAULT": "local"}
    for routing in ROUTINGS:
        choices[cell + "//platforms:routing_" + routing] = routing
    return select(choices)

def _remote_settings(ctx: AnalysisContext) -> dict[str, typing.Any]:
    """The [persistent_workers] remote settings, as the runtime's config key `remote`."""
    remote = {"tls": bool_setting("remote_tls", ctx.attrs.remote_tls)}
    for key in ("fallback_local", "cache", "persistent"):
        remote[key] = bool_setting("remote_" + key, getattr(ctx.attrs, "remote_" + key))
    for key in ("endpoint", "instance_name", "credentials_file", "tls_ca_file"):
        value = getattr(ctx.attrs, "remote_" + key)
        if value:
            remote[key] = value
    properties = properties_setting("remote_properties", ctx.attrs.remote_properties)
    if properties:
        remote["properties"] = properties
    return remote

def _runtime_config(ctx: AnalysisContext, backend: RunInfo) -> dict[str, typing.Any]:
    """The JSON object that `worker-runtime serve --config` reads (keys: see its README)."""
    config = {
        "cancellable": ctx.attrs.cancellable,
        "command": cmd_args(backend),
        "env": ctx.attrs.env,
        "key_env": ctx.attrs.key_env,
        "multiplex": ctx.attrs.multiplex,
        "protocol": ctx.attrs.protocol,
        "remote": _remote_settings(ctx),
        "routing": check_routing(ctx.attrs.routing),
        "tool_inputs": ctx.attrs.tool_inputs,
    }
    if ctx.attrs.max_instances != None:
        config["max_instances"] = ctx.attrs.max_instances
    return config

def _worker_tool_impl(ctx: AnalysisContext) -> list[Provider]:
    backend = ctx.attrs.backend[RunInfo]
    config = ctx.actions.write_json("worker_runtime.json", _runtime_config(ctx, backend))
    runtime = ctx.attrs._runtime[RunInfo]
    exe = cmd_args(
        runtime,
        "serve",
        "--config",
        config,
        hidden = [backend, ctx.attrs.tool_inputs],
    )
    worker = WorkerInfo(
        exe = exe,
        concurrency = ctx.attrs.concurrency,
        streaming = ctx.attrs.streaming,
        supports_bazel_remote_persistent_worker_protocol = ctx.attrs.supports_bazel_remote_persistent_worker_protocol,
    )
    one_shot = ctx.attrs.fallback[RunInfo] if ctx.attrs.fallback else backend
    fallback = RunInfo(args = cmd_args(one_shot))
    return [
        DefaultInfo(default_output = config),
        worker,
        fallback,
        WorkerToolInfo(config = config, fallback = fallback, worker = worker),
    ]

worker_tool = rule(
    impl = _worker_tool_impl,
    doc = "Wraps a Bazel-protocol worker so that Buck2 runs it warm through worker-runtime. " +
          "Create one per tool (in a toolchain): each WorkerInfo is one worker process.",
    attrs = {
        "backend": attrs.exec_dep(
            providers = [RunInfo],
            doc = "The worker executable; started as its RunInfo plus --persistent_worker.",
        ),
        "cancellable": attrs.bool(
            default = False,
            doc = "Multiplex only: the backend honours cancel requests.",
        ),
        "concurrency": attrs.option(
            attrs.int(),
            default = None,
            doc = "Most requests Buck2 keeps in flight on this worker (None: no limit).",
        ),
        "env": attrs.dict(
            attrs.string(),
            attrs.string(),
            default = {},
            doc = "Fixed variables added to the backend's environment.",
        ),
        "fallback": attrs.option(
            attrs.exec_dep(providers = [RunInfo]),
            default = None,
            doc = "What runs one-shot when workers are off (default: the backend itself).",
        ),
        "key_env": attrs.list(
            attrs.string(),
            default = [],
            doc = "Action env variables that pick (and are set in) the backend process.",
        ),
        "max_instances": attrs.option(
            attrs.int(),
            default = None,
            doc = "Singleplex: the most backend processes (None: the number of CPUs).",
        ),
        "multiplex": attrs.bool(
            default = False,
            doc = "One backend process takes many requests at once.",
        ),
        "remote_credentials_file": attrs.string(
            default = read_root_config("persistent_workers", "remote_credentials_file", ""),
            doc = "[persistent_workers] remote_credentials_file: a file with the bearer token.",
        ),
        "remote_cache": attrs.string(
            default = read_root_config("persistent_workers", "remote_cache", "true"),
            doc = "[persistent_workers] remote_cache: false marks remote actions do_not_cache.",
        ),
        "remote_endpoint": attrs.string(
            default = read_root_config("persistent_workers", "remote_endpoint", ""),
            doc = "[persistent_workers] remote_endpoint: the REAPI server, e.g. grpcs://host:443.",
        ),
        "remote_fallback_local": attrs.string(
            default = read_root_config("persistent_workers", "remote_fallback_local", "false"),
            doc = "[persistent_workers] remote_fallback_local: run locally when the remote fails.",
        ),
        "remote_instance_name": attrs.string(
            default = read_root_config("persistent_workers", "remote_instance_name", ""),
            doc = "[persistent_workers] remote_instance_name: the REAPI instance (the tenant).",
        ),
        "remote_persistent": attrs.string(
            default = read_root_config("persistent_workers", "remote_persistent", "true"),
            doc = "[persistent_workers] remote_persistent: false sends plain one-shot actions.",
        ),
        "remote_properties": attrs.string(
            default = read_root_config("persistent_workers", "remote_properties", ""),
            doc = "[persistent_workers] remote_properties: the platform's properties, name=value,...",
        ),
        "remote_tls": attrs.string(
            default = read_root_config("persistent_workers", "remote_tls", "false"),
            doc = "[persistent_workers] remote_tls: true or false.",
        ),
        "remote_tls_ca_file": attrs.string(
            default = read_root_config("persistent_workers", "remote_tls_ca_file", ""),
            doc = "[persistent_workers] remote_tls_ca_file: PEM roots to trust (default: the system's).",
        ),
        "routing": attrs.string(
            default = routing_select(),
            doc = "Where requests go; by default what the execution platform's routing says.",
        ),
        "protocol": attrs.enum(
            ["proto", "json"],
            default = "proto",
            doc = "The backend's wire format.",
        ),
        "streaming": attrs.bool(
            default = True,
            doc = "Buck2 sends requests on one ExecuteStream (about 0.4 ms less per request).",
        ),
        "supports_bazel_remote_persistent_worker_protocol": attrs.bool(
            default = False,
            doc = "Let Buck2's own remote persistent worker path use this tool.",
        ),
        "tool_inputs": attrs.list(
            attrs.source(),
            default = [],
            doc = "Files whose content is part of the worker key (a change starts a new backend).",
        ),
        "_runtime": attrs.default_only(attrs.exec_dep(
            providers = [RunInfo],
            default = toolchain_target("worker_runtime"),
            doc = "The worker-runtime command.",
        )),
    },
)
