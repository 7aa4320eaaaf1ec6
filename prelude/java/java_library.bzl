"""java_library: Java sources (and resources) compiled on a warm javac worker into a jar."""

load("//java:java_providers.bzl", "JavaClasspathTSet", "JavaLibraryInfo", "classpath_args")
load("//java:java_toolchain_providers.bzl", "JavaToolchainInfo")
load("//utils:settings.bzl", "toolchain_target")
load("//worker:worker_run.bzl", "worker_run")

# The timestamp of every jar entry (the earliest a zip entry can carry, as other
# reproducible builds use).
JAR_DATE = "1980-01-01T00:00:02Z"

def _normalized(target_name: str, path: str) -> str:
    """`path` normalised as Buck2's `paths.normalize` does.

    `./a//b/../c/` is `a/c`, `.` is empty; one that leaves the package is an analysis
    error.
    """
    parts = []
    for part in path.split("/"):
        if part == "..":
            if not parts:
                fail(target_name + ": resources_root " + repr(path) + " leaves the package")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)

def _resource_path(target_name: str, resource: Artifact, root: str | None) -> str:
    """A resource's path in the jar: its package-relative path, less `root` if given."""
    path = resource.short_path
    root = _normalized(target_name, root) if root != None else ""
    if not root:
        return path
    prefix = root + "/"
    if not path.startswith(prefix):
        fail(target_name + ": resource " + path + " is not under resources_root " + repr(root) +
             " (resource paths are relative to the package)")
    return path[len(prefix):]

def compile_java(
        actions: AnalysisActions,
        *,
        # A JavaToolchainInfo. Typed Any: Buck2 evaluates this file once per cell whose
        # BUCK files load it, so the provider type of a toolchain declared in another cell
        # is another instance, which an annotation would refuse.
        toolchain: typing.Any,
        target_name: str,
        srcs: list[Artifact],
        resources: list[Artifact],
        deps: list[typing.Any],
        resources_root: str | None = None) -> Artifact:
    """Compiles `srcs` against `deps` on the javac worker, then jars them with `resources`.

    Args:
      actions: `ctx.actions` of the target.
      toolchain: the JavaToolchainInfo.
      target_name: the target's name, for the jar's name and error messages.
      srcs: the .java files; none is an analysis error.
      resources: files added to the jar, at their package-relative paths.
      deps: the JavaLibraryInfo of every library compiled against (exported ones included).
      resources_root: a package-relative directory under which every resource is, taken
        off their paths in the jar (`src/main/resources`); None: none.

    Returns:
      The jar holding the classes and the resources.
    """
    if not srcs:
        fail(target_name + ": a Java target needs srcs")
    classes = actions.declare_output("classes", dir = True)
    parts = ["-d", classes.as_output()]
    inputs = list(srcs)
    if deps:
        classpath = classpath_args(actions.tset(
            JavaClasspathTSet,
            children = [info.compile_classpath for info in deps],
        ))
        parts += ["-cp", cmd_args(classpath, delimiter = ":")]
        inputs.append(classpath)
    if toolchain.release:
        parts += ["--release", toolchain.release]
    parts += toolchain.javac_options or []
    worker_run(
        actions,
        tool = toolchain.compiler,
        args = cmd_args(parts, srcs),
        category = "javac",
        inputs = inputs,
    )
    jar = actions.declare_output(target_name + ".jar")

    # One timestamp for every entry: the same classes make the same jar, so that what
    # compiles against it, and the action cache, see no change (jar takes --date from
    # JDK 17 on).
    jar_args = [toolchain.jar, "--create", "--date", JAR_DATE, "--file", jar.as_output(), "-C", classes, "."]
    if resources:
        resource_dir = actions.symlinked_dir(
            "resources",
            {_resource_path(target_name, r, resources_root): r for r in resources},
        )
        jar_args += ["-C", resource_dir, "."]
    actions.run(cmd_args(jar_args), category = "jar")
    return jar

def _java_library_impl(ctx: AnalysisContext) -> list[Provider]:
    deps = [dep[JavaLibraryInfo] for dep in ctx.attrs.deps]
    exported = [dep[JavaLibraryInfo] for dep in ctx.attrs.exported_deps]
    jar = compile_java(
        ctx.actions,
        toolchain = ctx.attrs._java_toolchain[JavaToolchainInfo],
        target_name = ctx.attrs.name,
        srcs = ctx.attrs.srcs,
        resources = ctx.attrs.resources,
        resources_root = ctx.attrs.resources_root,
        deps = deps + exported,
    )
    info = JavaLibraryInfo(
        compile_classpath = ctx.actions.tset(
            JavaClasspathTSet,
            value = jar,
            children = [info.compile_classpath for info in exported],
        ),
        output_jar = jar,
        runtime_classpath = ctx.actions.tset(
            JavaClasspathTSet,
            value = jar,
            children = [info.runtime_classpath for info in deps + exported],
        ),
    )
    return [DefaultInfo(default_output = jar), info]

RESOURCES_ROOT_ATTR = attrs.option(attrs.string(), default = None, doc = """
    A directory of the package under which every resource is (`src/main/resources`), taken
    off their paths in the jar; by default a resource's path in the jar is its path
    relative to the package.""")

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
        "resources_root": RESOURCES_ROOT_ATTR,
        "srcs": attrs.list(attrs.source(), default = [], doc = "The .java files."),
        "_java_toolchain": JAVA_TOOLCHAIN_ATTR,
    },
)
