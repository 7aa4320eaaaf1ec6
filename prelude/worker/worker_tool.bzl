"""The worker_tool rule: a backend that speaks Bazel's worker protocol, run warm by worker-runtime."""

load("//worker:providers.bzl", "WorkerToolInfo")

def _runtime_config(ctx: AnalysisContext, backend: RunInfo) -> dict[str, typing.Any]:
    """The JSON object that `worker-runtime serve --config` reads (keys: see its README)."""
    config = {
        "cancellable": ctx.attrs.cancellable,
        "command": cmd_args(backend),
        "env": ctx.attrs.env,
        "key_env": ctx.attrs.key_env,
        "multiplex": ctx.attrs.multiplex,
        "protocol": ctx.attrs.protocol,
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
    fallback = RunInfo(args = cmd_args(backend))
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
            default = "toolchains//:worker_runtime",
            doc = "The worker-runtime command.",
        )),
    },
)
