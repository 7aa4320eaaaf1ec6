"""The host_command rule: a command already on the machine (worker-runtime), as a RunInfo."""

def _host_command_impl(ctx: AnalysisContext) -> list[Provider]:
    return [DefaultInfo(), RunInfo(args = cmd_args(ctx.attrs.command))]

host_command = rule(
    impl = _host_command_impl,
    doc = "A command given by path (relative to the project root, where Buck2 runs workers).",
    attrs = {
        "command": attrs.list(
            attrs.string(),
            doc = "The command line, e.g. the project's .venv/bin/worker-runtime.",
        ),
    },
)
