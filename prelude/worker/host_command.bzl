"""The host_command rule: a command already on the machine, or a script of the repository, as a RunInfo."""

def _host_command_impl(ctx: AnalysisContext) -> list[Provider]:
    command = list(ctx.attrs.command)
    if ctx.attrs.script != None:
        # A source artifact: its path is right wherever this package's cell is mounted.
        command.append(ctx.attrs.script)
    command += ctx.attrs.args
    if not command:
        fail(str(ctx.label.name) + ": host_command needs a command or a script")

    # The files the command runs (a script, a jar) are hidden inputs: an action using the
    # command reruns when they change.
    return [DefaultInfo(), RunInfo(args = cmd_args(command, hidden = ctx.attrs.srcs))]

host_command = rule(
    impl = _host_command_impl,
    doc = "A command given by path (relative to the project root, where Buck2 runs " +
          "workers), or a script of the repository given as a source file, or both " +
          "(the script is appended: command = [\"python3\"], script = \"tool.py\"), then args.",
    attrs = {
        "args": attrs.list(
            attrs.string(),
            default = [],
            doc = "Arguments after the script (or the command).",
        ),
        "command": attrs.list(
            attrs.string(),
            default = [],
            doc = "The command line, e.g. the project's .venv/bin/worker-runtime.",
        ),
        "script": attrs.option(
            attrs.source(),
            default = None,
            doc = "A script of this package, appended to `command` (and an input, like `srcs`).",
        ),
        "srcs": attrs.list(
            attrs.source(),
            default = [],
            doc = "Files the command runs (a script, a jar): inputs of every action using it.",
        ),
    },
)
