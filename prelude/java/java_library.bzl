"""java_library: Java sources (and resources) compiled on a warm javac worker into a jar."""

load("//java:java_toolchain.bzl", "JavaToolchainInfo")
load("//utils:lists.bzl", "unique")
load("//utils:settings.bzl", "toolchain_target")
load("//worker:worker_run.bzl", "worker_run")

JavaLibraryInfo = provider(
    doc = "A compiled Java library.",
    fields = {
        # Jars a dependent compiles against: this jar and those of its exported deps.
        "compile_jars": provider_field(typing.Any),
        # This library's jar (an Artifact).
        "output_jar": provider_field(typing.Any),
        # Every jar needed to run code that uses this library, this one first.
        "runtime_jars": provider_field(typing.Any),
    },
)

def compile_java(
        ctx: AnalysisContext,
        # A JavaToolchainInfo. Typed Any: Buck2 evaluates this file once per cell whose
        # BUCK files load it, so the provider type of a toolchain declared in another cell
        # is another instance, which an annotation would refuse.
        toolchain: typing.Any,
        deps: list[typing.Any]) -> typing.Any:
    """Compiles ctx.attrs.srcs against `deps` (JavaLibraryInfo) on the javac worker.

    Args:
      ctx: the analysis context of a rule with `srcs`, `resources` and `name`.
      toolchain: the JavaToolchainInfo.
      deps: the JavaLibraryInfo of every dependency, exported ones included.

    Returns:
      The jar (an Artifact) holding the classes and the resources.
    """
    if not ctx.attrs.srcs:
        fail(str(ctx.label.name) + ": a Java target needs srcs")
    classpath = unique([jar for info in deps for jar in info.compile_jars])
    classes = ctx.actions.declare_output("classes", dir = True)
    parts = ["-d", classes.as_output()]
    if classpath:
        parts += ["-cp", cmd_args(classpath, delimiter = ":")]
    if toolchain.release:
        parts += ["--release", toolchain.release]
    parts += toolchain.javac_options or []
    worker_run(
        ctx.actions,
        tool = toolchain.compiler,
        args = cmd_args(parts, ctx.attrs.srcs),
        category = "javac",
        inputs = ctx.attrs.srcs + classpath,
    )
    jar = ctx.actions.declare_output(ctx.attrs.name + ".jar")
    jar_args = [toolchain.jar, "--create", "--file", jar.as_output(), "-C", classes, "."]
    if ctx.attrs.resources:
        resources = ctx.actions.symlinked_dir(
            "resources",
            {resource.short_path: resource for resource in ctx.attrs.resources},
        )
        jar_args += ["-C", resources, "."]
    ctx.actions.run(cmd_args(jar_args), category = "jar")
    return jar

def _java_library_impl(ctx: AnalysisContext) -> list[Provider]:
    toolchain = ctx.attrs._java_toolchain[JavaToolchainInfo]
    deps = [dep[JavaLibraryInfo] for dep in ctx.attrs.deps]
    exported = [dep[JavaLibraryInfo] for dep in ctx.attrs.exported_deps]
    jar = compile_java(ctx, toolchain, deps + exported)
    info = JavaLibraryInfo(
        compile_jars = unique([jar] + [j for e in exported for j in e.compile_jars]),
        output_jar = jar,
        runtime_jars = unique([jar] + [j for d in deps + exported for j in d.runtime_jars]),
    )
    return [DefaultInfo(default_output = jar), info]

JAVA_TOOLCHAIN_ATTR = attrs.default_only(attrs.toolchain_dep(
    providers = [JavaToolchainInfo],
    default = toolchain_target("java"),
    doc = "The Java toolchain.",
))

java_library = rule(
    impl = _java_library_impl,
    doc = "Compiles Java sources on a warm javac worker (a cold javac when workers are off) into a jar.",
    attrs = {
        "deps": attrs.list(
            attrs.dep(providers = [JavaLibraryInfo]),
            default = [],
            doc = "Libraries this one compiles against.",
        ),
        "exported_deps": attrs.list(
            attrs.dep(providers = [JavaLibraryInfo]),
            default = [],
            doc = "Libraries that dependents also compile against.",
        ),
        "resources": attrs.list(attrs.source(), default = [], doc = "Files added to the jar."),
        "srcs": attrs.list(attrs.source(), default = [], doc = "The .java files."),
        "_java_toolchain": JAVA_TOOLCHAIN_ATTR,
    },
)
