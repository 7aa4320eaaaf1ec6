"""HaskellLibraryInfo, and the transitive set of libraries its dependents compile and link with."""

# What one library gives the targets that depend on it.
# buildifier: disable=name-conventions (records and sets are PascalCase, as in Buck2)
HaskellLibraryNode = record(
    # The library's static archive.
    archive = Artifact,
    # Its modules' interface files: inputs of every compile that may import them.
    interfaces = list[Artifact],
    # The `-i<dir>` argument (a cmd_args, a path only) with which GHC finds them.
    search_path = typing.Any,
    # Its modules' names, and the library's label: two libraries of one closure must not
    # define the same module (GHC would take whichever interface it finds first).
    modules = list[str],
    label = str,
)

def _archive_arg(node: HaskellLibraryNode) -> Artifact:
    return node.archive

def _interface_args(node: HaskellLibraryNode) -> list[Artifact]:
    return node.interfaces

def _search_path_arg(node: HaskellLibraryNode) -> typing.Any:
    return node.search_path

# One HaskellLibraryNode per library; a node's children are the sets of the libraries it
# depends on. A node is visited once however many libraries share it.
# buildifier: disable=name-conventions (records and sets are PascalCase, as in Buck2)
HaskellLibraryTSet = transitive_set(args_projections = {
    "archives": _archive_arg,
    "interfaces": _interface_args,
    "search_path": _search_path_arg,
})

def link_args(libraries: typing.Any) -> typing.Any:
    """The archives of a HaskellLibraryTSet in link order, as command-line arguments.

    Each library comes before every library it depends on (Buck2's `topological` ordering),
    so a linker that reads the archives once, in order, resolves every symbol; ghc passes
    -optl options after its package libraries, so a linker group cannot be used instead.

    Args:
      libraries: a HaskellLibraryTSet.

    Returns:
      A projection of the set (cmd-arg-like), one argument per archive.
    """
    return libraries.project_as_args("archives", ordering = "topological")

def interface_args(libraries: typing.Any) -> typing.Any:
    """The interface files of a HaskellLibraryTSet (to be inputs of a compile).

    Args:
      libraries: a HaskellLibraryTSet.

    Returns:
      A projection of the set (cmd-arg-like).
    """
    return libraries.project_as_args("interfaces", ordering = "dfs")

def search_path_args(libraries: typing.Any) -> typing.Any:
    """The `-i<dir>` arguments of a HaskellLibraryTSet, a library before its dependencies.

    Args:
      libraries: a HaskellLibraryTSet.

    Returns:
      A projection of the set (cmd-arg-like), one argument per library.
    """
    return libraries.project_as_args("search_path", ordering = "dfs")

HaskellLibraryInfo = provider(
    doc = "A compiled Haskell library, with what its dependents compile and link against.",
    fields = {
        # This library (the set's value) and every library it depends on, transitively
        # (its children). Never None.
        "libraries": provider_field(HaskellLibraryTSet),
        # The GHC packages (from GHC's package database) this library and its dependencies
        # use, each once. A plain list, not a transitive set: many libraries name the same
        # package, a set would repeat it, and the list is bounded by the package database.
        # Never None.
        "packages": provider_field(list[str]),
    },
)
