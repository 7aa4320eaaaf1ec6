"""The Java toolchain: the javac worker, jar, java, and the compiler options every target gets."""

load("//worker:providers.bzl", "WorkerToolInfo")

JavaToolchainInfo = provider(
    doc = "What the Java rules compile, package and run with.",
    fields = {
        # The WorkerToolInfo of the javac worker (its fallback runs a cold javac).
        "compiler": provider_field(typing.Any),
        # The `jar` command (a RunInfo).
        "jar": provider_field(typing.Any),
        # The `java` command (a RunInfo), for java_binary's launcher.
        "java": provider_field(typing.Any),
        # Options added to every javac invocation (a list of str, or None).
        "javac_options": provider_field(typing.Any, default = None),
        # The --release level, or None for the compiler's default (a str or None).
        "release": provider_field(typing.Any, default = None),
    },
)

def _java_toolchain_impl(ctx: AnalysisContext) -> list[Provider]:
    return [
        DefaultInfo(),
        JavaToolchainInfo(
            compiler = ctx.attrs.compiler[WorkerToolInfo],
            jar = ctx.attrs.jar[RunInfo],
            java = ctx.attrs.java[RunInfo],
            javac_options = ctx.attrs.javac_options,
            release = ctx.attrs.release,
        ),
    ]

java_toolchain = rule(
    impl = _java_toolchain_impl,
    doc = "A Java toolchain whose compiles go to a warm javac worker.",
    is_toolchain_rule = True,
    attrs = {
        "compiler": attrs.exec_dep(
            providers = [WorkerToolInfo],
            doc = "A worker_tool wrapping the javac worker, with a cold javac as its fallback.",
        ),
        "jar": attrs.exec_dep(providers = [RunInfo], doc = "The jar command."),
        "java": attrs.exec_dep(providers = [RunInfo], doc = "The java command."),
        "javac_options": attrs.list(attrs.string(), default = [], doc = "Options for every compile."),
        "release": attrs.option(attrs.string(), default = None, doc = "javac --release level."),
    },
)
