"""The host_command rule: a command already on the machine (worker-runtime), as a RunInfo."""

def _host_command_impl(ctx: AnalysisContext) -> list[Provider]:
    # The files the command runs (a script, a jar) are hidden inputs: an action using the
    # command reruns when they change.
    return [DefaultInfo(), RunInfo(args = cmd_args(ctx.attrs.command, hidden = ctx.attrs.srcs))]

host_command = rule(
    impl = _host_command_impl,
    doc = "A command given by path (relative to the project root, where Buck2 runs workers).",
    attrs = {
        "command": attrs.list(
            attrs.string(),
            doc = "The command line, e.g. the project's .venv/bin/worker-runtime.",
        ),
        "srcs": attrs.list(
            attrs.source(),
            default = [],
            doc = "Files the command runs (a script, a jar): inputs of every action using it.",
        ),
    },
)
