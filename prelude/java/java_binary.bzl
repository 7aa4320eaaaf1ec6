"""java_binary: a main class with its runtime classpath, runnable with `buck2 run`."""

load("//java:java_library.bzl", "JAVA_TOOLCHAIN_ATTR", "RESOURCES_ROOT_ATTR", "compile_java")
load("//java:java_providers.bzl", "JavaClasspathTSet", "JavaLibraryInfo", "classpath_args")
load("//java:java_toolchain_providers.bzl", "JavaToolchainInfo")

def _java_binary_impl(ctx: AnalysisContext) -> list[Provider]:
    toolchain = ctx.attrs._java_toolchain[JavaToolchainInfo]
    deps = [dep[JavaLibraryInfo] for dep in ctx.attrs.deps]
    children = [info.runtime_classpath for info in deps]
    if ctx.attrs.resources and not ctx.attrs.srcs:
        # compile_java makes the jar that carries them, and needs sources to.
        fail("java_binary " + ctx.attrs.name + ": resources need srcs (the binary's own jar " +
             "carries them); put them in a java_library among its deps instead")
    if ctx.attrs.srcs:
        jar = compile_java(
            ctx.actions,
            toolchain = toolchain,
            target_name = ctx.attrs.name,
            srcs = ctx.attrs.srcs,
            resources = ctx.attrs.resources,
            resources_root = ctx.attrs.resources_root,
            deps = deps,
        )
        runtime = ctx.actions.tset(JavaClasspathTSet, value = jar, children = children)
    else:
        runtime = ctx.actions.tset(JavaClasspathTSet, children = children)
    classpath = classpath_args(runtime)
    launcher = ctx.actions.write(
        ctx.attrs.name + ".sh",
        cmd_args(
            "#!/bin/sh",
            cmd_args(
                "exec",
                # Each word quoted for the shell: a nested class's `$` or a space in the
                # project's path would otherwise be read by it.
                cmd_args(toolchain.java, quote = "shell"),
                "-cp",
                cmd_args(classpath, delimiter = ":", quote = "shell"),
                cmd_args(ctx.attrs.main_class, quote = "shell"),
                "\"$@\"",
                delimiter = " ",
            ),
        ),
        is_executable = True,
        absolute = True,
    )
    return [
        DefaultInfo(default_output = launcher, other_outputs = [classpath]),
        RunInfo(args = cmd_args(launcher, hidden = classpath)),
    ]

java_binary = rule(
    impl = _java_binary_impl,
    doc = "A Java program: its main class run with the runtime classpath of its deps.",
    attrs = {
        "deps": attrs.list(
            attrs.dep(providers = [JavaLibraryInfo]),
            default = [],
            doc = "Libraries on the classpath.",
        ),
        "main_class": attrs.string(doc = "The class whose main() runs."),
        "resources": attrs.list(attrs.source(), default = [], doc = "Files added to the jar."),
        "resources_root": RESOURCES_ROOT_ATTR,
        "srcs": attrs.list(attrs.source(), default = [], doc = "Sources of the binary itself."),
        "_java_toolchain": JAVA_TOOLCHAIN_ATTR,
    },
)
