"""java_toolchain: the javac worker, jar, java, and the compiler options every target gets."""

load("//java:java_toolchain_providers.bzl", "JavaToolchainInfo")
load("//worker:worker_tool_providers.bzl", "WorkerToolInfo")

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
            doc = "A worker_tool wrapping the javac worker, with the worker's one-shot mode " +
                  "as its fallback (a plain javac would not read the argfiles by the " +
                  "project's rule, nor give a compile with no deps an empty class path).",
        ),
        "jar": attrs.exec_dep(providers = [RunInfo], doc = "The jar command."),
        "java": attrs.exec_dep(providers = [RunInfo], doc = "The java command."),
        "javac_options": attrs.list(attrs.string(), default = [], doc = "Options for every compile."),
        "release": attrs.option(attrs.string(), default = None, doc = "javac --release level."),
    },
)
