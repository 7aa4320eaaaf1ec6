"""The worker_tool rule: a backend that speaks Bazel's worker protocol, run warm by worker-runtime."""

load("//utils:settings.bzl", "ROUTINGS", "endpoint_problem", "toolchain_target")
load("//worker:worker_settings_providers.bzl", "WorkerSettingsInfo")
load("//worker:worker_tool_providers.bzl", "WorkerToolInfo")

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
      A select() giving "local", "remote", "auto", "race" or "native".
    """
    choices = {"DEFAULT": "local"}
    for routing in ROUTINGS:
        choices[cell + "//platforms:routing_" + routing] = routing
    return select(choices)

def _runtime_config(ctx: AnalysisContext, backend: RunInfo) -> dict[str, typing.Any]:
    """The JSON object that `worker-runtime serve --config` reads (keys: worker_runtime/config.py)."""
    config = {
        "cancellable": ctx.attrs.cancellable,
        "command": cmd_args(backend),
        "env": ctx.attrs.env,
        "key_env": ctx.attrs.key_env,
        "multiplex": ctx.attrs.multiplex,
        "protocol": ctx.attrs.protocol,
        "remote": ctx.attrs._worker_settings[WorkerSettingsInfo].remote,
        "routing": _routing(ctx),
        "server": ctx.attrs._worker_settings[WorkerSettingsInfo].server,
        "tool_inputs": ctx.attrs.tool_inputs,
    }
    if ctx.attrs.max_instances != None:
        config["max_instances"] = ctx.attrs.max_instances
    return config

# Routing native: Buck2 starts the tool locally as its own worker (WORKER_SOCKET set) and a
# remote executor starts it as a Bazel persistent worker (exe + @argfile +
# --persistent_worker). This entry runs the words before the marker (worker-runtime serve)
# in the first case, the words after it (the worker as Buck2 built it) plus the request's
# in the second. Every file either side runs is named on the command line, so a remote
# executor stages it as a tool file.
NATIVE_MARKER = "--remote-backend"
_NATIVE_ENTRY = """#!/bin/sh
# Written by worker_tool (routing native): runs worker-runtime when Buck2 starts it as its
# worker, else the remote backend after the marker, with the rest of the arguments.
if [ -n "${WORKER_SOCKET:-}" ]; then side=runtime; else side=backend; fi
part=runtime
for word do
  shift
  if [ "$part" = runtime ] && [ "$word" = MARKER ]; then part=backend; continue; fi
  if [ "$part" = "$side" ]; then set -- "$@" "$word"; fi
done
exec "$@"
""".replace("MARKER", NATIVE_MARKER)

def _with_env(ctx: AnalysisContext, command: typing.Any) -> typing.Any:
    """`command` run with the tool's `env`, through env(1).

    Every side but the local warm backend (which gets it through the runtime's config)
    runs so: else one action would build differently by where it ran.
    """
    if not ctx.attrs.env:
        return command
    return cmd_args("env", ["{}={}".format(k, v) for k, v in sorted(ctx.attrs.env.items())], command)

def _native_exe(ctx: AnalysisContext, local: typing.Any) -> tuple:
    """The WorkerInfo exe of routing native, and what of it runs remotely.

    The exe is the entry, `local`, the marker and the remote backend (under the tool's
    env); the remote part, the entry and that remote backend.
    """
    if ctx.attrs.remote_backend == None:
        fail("worker_tool " + ctx.label.name + ": routing native needs remote_backend, the worker " +
             "as Buck2 builds it (a remote executor runs it from the action's input root)")
    entry = ctx.actions.write("worker_entry.sh", _NATIVE_ENTRY, is_executable = True)
    remote = _with_env(ctx, ctx.attrs.remote_backend[RunInfo])
    return cmd_args(entry, local, NATIVE_MARKER, remote), cmd_args(entry, remote)

def _routing(ctx: AnalysisContext) -> str:
    """The tool's routing, its `routing` attribute checked and named if it is wrong.

    The default select() gives the execution platform's, one of ROUTINGS; a value set on
    the target is the user's, and an error must send them there, not to .buckconfig.
    """
    if ctx.attrs.routing not in ROUTINGS:
        fail("worker_tool " + ctx.label.name + ": routing = " + repr(ctx.attrs.routing) +
             " (its `routing` attribute) is not one of " + ", ".join(ROUTINGS) +
             "; leave the attribute out to take the execution platform's")
    return ctx.attrs.routing

def _check_runtime_attrs(ctx: AnalysisContext) -> None:
    """Fails analysis, naming the attribute, on what the runtime would refuse.

    worker_runtime/config.py refuses these at its start: every action on the tool failed
    then, as its worker's start did."""
    name = "worker_tool " + ctx.label.name + ": "
    if ctx.attrs.cancellable and not ctx.attrs.multiplex:
        fail(name + "cancellable = True needs multiplex = True (a singleplex worker is " +
             "killed to cancel its request)")
    if ctx.attrs.max_instances != None and ctx.attrs.max_instances < 1:
        fail(name + "max_instances = " + str(ctx.attrs.max_instances) + " must be 1 or more, " +
             "or left out for one per CPU")
    for variable in ctx.attrs.key_env:
        if not variable or "=" in variable:
            fail(name + "key_env holds " + repr(variable) + ", not an environment variable name")

# The routings whose requests the runtime sends to the remote endpoint (all or some).
_REMOTE_ROUTINGS = ["remote", "auto", "race"]

def _worker_tool_impl(ctx: AnalysisContext) -> list[Provider]:
    backend = ctx.attrs.backend[RunInfo]
    routing = _routing(ctx)
    if ctx.attrs.concurrency != None and ctx.attrs.concurrency < 1:
        # Buck2 takes it as an unsigned number: a negative one fails with a type error
        # that does not name the attribute, and 0 would let no request through.
        fail("worker_tool " + ctx.label.name + ": concurrency = " + str(ctx.attrs.concurrency) +
             " must be 1 or more (the most requests Buck2 keeps in flight on the worker), " +
             "or left out for no limit")
    _check_runtime_attrs(ctx)
    if routing in _REMOTE_ROUTINGS and not ctx.attrs._worker_settings[WorkerSettingsInfo].remote.get("endpoint"):
        # The runtime would refuse to start without one: said here, during analysis.
        fail("worker_tool " + ctx.label.name + ": routing " + routing + " sends requests to a " +
             "remote endpoint, and none is set: set [persistent_workers] remote_endpoint (the " +
             "REAPI server, e.g. grpcs://host:443), or use an execution platform with routing local")
    if routing in _REMOTE_ROUTINGS:
        problem = endpoint_problem(ctx.attrs._worker_settings[WorkerSettingsInfo].remote)
        if problem:
            fail("worker_tool " + ctx.label.name + ": " + problem)
    config = ctx.actions.write_json("worker_runtime.json", _runtime_config(ctx, backend))
    runtime = ctx.attrs._runtime[RunInfo]
    local = cmd_args(runtime, "serve", "--config", config, hidden = [backend, ctx.attrs.tool_inputs])
    native = routing == "native"
    exe, remote_side = _native_exe(ctx, local) if native else (local, None)
    worker = WorkerInfo(
        exe = exe,
        concurrency = ctx.attrs.concurrency,
        streaming = ctx.attrs.streaming,
        supports_bazel_remote_persistent_worker_protocol = native or ctx.attrs.supports_bazel_remote_persistent_worker_protocol,
    )
    if native:
        # One-shot runs (workers off, or a remote engine without workers) happen remotely
        # too. What the worker runs remotely goes with every action, so that a remote
        # executor finds it in the input root: Buck2 uploads an action's inputs, never its
        # worker's. (The local side's files, worker-runtime's, stay on this machine.)
        chosen = ctx.attrs.remote_fallback if ctx.attrs.remote_fallback != None else ctx.attrs.remote_backend
        fallback = RunInfo(args = cmd_args(_with_env(ctx, chosen[RunInfo]), hidden = [remote_side]))
    else:
        one_shot = ctx.attrs.fallback[RunInfo] if ctx.attrs.fallback else backend
        fallback = RunInfo(args = cmd_args(_with_env(ctx, one_shot)))
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
        "remote_backend": attrs.option(
            attrs.exec_dep(providers = [RunInfo]),
            default = None,
            doc = "Routing native: the worker as Buck2 builds it, which a remote executor " +
                  "runs from the action's input root (every file it reads named on its " +
                  "command line). Needed by routing native.",
        ),
        "remote_fallback": attrs.option(
            attrs.exec_dep(providers = [RunInfo]),
            default = None,
            doc = "Routing native: what runs one-shot, locally or remotely (default: " +
                  "remote_backend, without --persistent_worker).",
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
            doc = "Let Buck2's own remote persistent worker path use this tool (always so " +
                  "under routing native).",
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
        "_worker_settings": attrs.default_only(attrs.dep(
            providers = [WorkerSettingsInfo],
            default = toolchain_target("worker_settings"),
            doc = "The [persistent_workers] settings; the remote ones reach the runtime config.",
        )),
    },
)
