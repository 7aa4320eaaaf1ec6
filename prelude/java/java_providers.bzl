"""JavaLibraryInfo, and the transitive set of jars its classpaths are made of."""

# A classpath lists a jar before the jars of its dependencies, the dependencies left to
# right, each jar once, where first met: javac and java take the first class of a name
# they find. Buck2's `dfs` ordering is that order; its default, `preorder`, does not
# promise left to right.
_CLASSPATH_ORDERING = "dfs"

def _jar_arg(jar: Artifact) -> Artifact:
    return jar

# One jar per node; a node's children are the sets of the libraries it needs. A node is
# visited once however many libraries share it, so a diamond's jar appears once.
# buildifier: disable=name-conventions (records and sets are PascalCase, as in Buck2)
JavaClasspathTSet = transitive_set(args_projections = {"jars": _jar_arg})

def classpath_args(classpath: typing.Any) -> typing.Any:
    """The jars of a JavaClasspathTSet, in classpath order, as command-line arguments.

    Args:
      classpath: a JavaClasspathTSet.

    Returns:
      A projection of the set (cmd-arg-like): one argument per jar; wrap it in
      `cmd_args(..., delimiter = ":")` for a `-cp` value.
    """
    return classpath.project_as_args("jars", ordering = _CLASSPATH_ORDERING)

JavaLibraryInfo = provider(
    doc = "A compiled Java library, with the classpaths its dependents compile and run with.",
    fields = {
        # The jars a dependent compiles against: this library's own and, transitively,
        # those of its exported_deps (not its other deps). Never None.
        "compile_classpath": provider_field(JavaClasspathTSet),
        # This library's jar: its classes and resources. Never None.
        "output_jar": provider_field(Artifact),
        # Every jar needed to run code that uses this library: its own, then those of all
        # its deps and exported_deps, transitively. Never None.
        "runtime_classpath": provider_field(JavaClasspathTSet),
    },
)
