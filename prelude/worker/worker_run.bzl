"""worker_run: one action that runs on a warm worker when workers are on, one-shot otherwise."""

# The action environment variable that carries the envelope. Buck2 sends the action's
# environment with every worker request; worker-runtime reads the envelope from it (to
# forward the request elsewhere) and never passes it to a backend. With workers off the
# backend runs one-shot and simply ignores the variable.
ENVELOPE_ENV = "WORKER_RUNTIME_ENVELOPE"

def worker_run(
        actions: AnalysisActions,
        *,
        # A WorkerToolInfo. Typed Any: Buck2 evaluates this file once per cell whose
        # BUCK files load it, so the provider type of a toolchain declared in another cell
        # is another instance, which an annotation would refuse.
        tool: typing.Any,
        args: typing.Any,
        category: str,
        identifier: str | None = None,
        inputs: list[typing.Any] = [],
        env: dict[str, typing.Any] = {},
        timeout_seconds: int | None = None,
        weight: int | None = None) -> None:
    """Registers one action running `args` on `tool`.

    With workers on, Buck2 sends the worker a request whose only argument is an
    @argfile holding `args` (the form remote persistent workers require); with workers
    off it runs `tool`'s one-shot command with that @argfile.

    Args:
      actions: `ctx.actions`.
      tool: the `WorkerToolInfo` of a `worker_tool` target.
      args: the request's arguments; its `.as_output()` artifacts are the outputs.
      category: the action's category (snake_case), as for `ctx.actions.run`.
      identifier: tells apart several actions of one category in a target.
      inputs: the files the action reads; recorded, with the outputs, in the envelope
        that lets the runtime forward the request, and made inputs of the action.
      env: extra environment of the action (a one-shot run sees it; a warm backend does
        not, unless the tool's `key_env` names it).
      timeout_seconds: passed to `ctx.actions.run`; the runtime cancels a request past it.
      weight: passed to `ctx.actions.run`.
    """
    prefix = category if identifier == None else category + "/" + identifier
    argfile = actions.write(prefix + ".args", cmd_args(args, ignore_artifacts = True))
    envelope = actions.write_json(prefix + ".envelope.json", {
        "argfile": argfile,
        "inputs": cmd_args(inputs, ignore_artifacts = True),
        "outputs": cmd_args(args.outputs, ignore_artifacts = True),
        "version": 1,
    })
    run_env = dict(env)
    run_env[ENVELOPE_ENV] = envelope

    # Buck2 types `weight` Option<u32>: an explicit None is an error, so it is passed
    # only when set.
    optional = {}
    if weight != None:
        optional["weight"] = weight
    actions.run(
        cmd_args(argfile, format = "@{}", hidden = [args, inputs]),
        exe = WorkerRunInfo(worker = tool.worker, exe = tool.fallback),
        category = category,
        identifier = identifier,
        env = run_env,
        timeout_seconds = timeout_seconds,
        **optional
    )
