"""haskell_library: one compile action per module on a warm GHC worker, and an archive.

Each module of `srcs` is compiled by its own action (`ghc -c` with explicit `-o`/`-ohi`).
A scan action reads the target's import declarations (`toolchains/haskell/scan_imports.py`)
and a `dynamic_output` registers the compiles from it, each after the modules of its
target it imports, with exactly their interfaces (and the deps') as inputs. A module's
name is its path relative to the package, without `.hs` (`Shop/Core/Money.hs` is
`Shop.Core.Money`).
"""

load(
    "//haskell:haskell_providers.bzl",
    "HaskellLibraryInfo",
    "HaskellLibraryNode",
    "HaskellLibraryTSet",
    "interface_args",
    "search_path_args",
)
load("//haskell:haskell_toolchain_providers.bzl", "HaskellToolchainInfo", "package_db_args")
load("//utils:graph.bzl", "dependency_order", "reachable")
load("//utils:lists.bzl", "unique")
load("//utils:settings.bzl", "toolchain_target")
load("//worker:worker_run.bzl", "worker_run")

def _module_path(target_name: str, src: Artifact) -> str:
    # A source's short_path is relative to its package in Buck2, which is exactly the
    # module's path (`Shop/Core/Money.hs`).
    path = src.short_path
    if not path.endswith(".hs"):
        fail(target_name + ": " + path + " is not a .hs file")
    return path[:-len(".hs")]

def _check_no_module_twice(target_name: str, modules: dict[str, typing.Any], deps_set: typing.Any):
    """Fails if a module is defined twice in the target's closure.

    By the target and a library, or by two libraries: each is compiled into GHC's one home
    unit, so a compile would take whichever interface its search path finds first, and
    the link one of the two objects.
    """
    defined_by = {}
    for library in deps_set.traverse():
        for name in library.modules:
            other = defined_by.get(name)
            if name in modules or (other != None and other != library.label):
                fail(target_name + ": module " + name + " is defined by both " + library.label +
                     " and " + (other or "this target") + "; each module name may appear once " +
                     "among a target and the libraries it depends on (rename one)")
            defined_by[name] = library.label

def compile_haskell(
        actions: AnalysisActions,
        *,
        # A HaskellToolchainInfo. Typed Any: Buck2 evaluates this file once per cell whose
        # BUCK files load it, so the provider type of a toolchain declared in another cell
        # is another instance, which an annotation would refuse.
        toolchain: typing.Any,
        target_name: str,
        srcs: list[Artifact],
        packages: list[str],
        compiler_flags: list[str],
        deps: list[typing.Any]) -> struct:
    """Compiles `srcs`, one action per module, against `deps` (HaskellLibraryInfo).

    Args:
      actions: `ctx.actions` of the target.
      toolchain: the HaskellToolchainInfo.
      target_name: the target's name, for error messages.
      srcs: the .hs files, in any order; none is an analysis error.
      packages: the GHC packages the target uses itself.
      compiler_flags: the target's own GHC flags, after the toolchain's.
      deps: the HaskellLibraryInfo of every dependency.

    Returns:
      A struct: `objects` and `interfaces` (lists of Artifacts, in `srcs` order),
      `search_path` (the `-i` argument that finds those interfaces), `packages` (every
      GHC package used, the deps' included, each once) and `deps` (a HaskellLibraryTSet
      of every library the target depends on, transitively).
    """
    if not srcs:
        fail(target_name + ": a Haskell target needs srcs")
    packages = unique(packages + [p for d in deps for p in d.packages])
    deps_set = actions.tset(HaskellLibraryTSet, children = [d.libraries for d in deps])
    dep_interfaces = interface_args(deps_set)
    dep_search_path = search_path_args(deps_set)

    # The toolchain's databases after its flags (a -clear-package-db there would drop them),
    # before the target's.
    flags = (toolchain.compiler_flags or []) + package_db_args(toolchain) + compiler_flags
    modules = {}  # module name -> struct(src, path, obj, hi)
    for src in srcs:
        path = _module_path(target_name, src)
        name = path.replace("/", ".")
        if name in modules:
            fail(target_name + ": module " + name + " is listed twice")
        modules[name] = struct(
            hi = actions.declare_output("ifaces/" + path + ".hi"),
            obj = actions.declare_output("objs/" + path + ".o"),
            path = path,
            src = src,
        )
    _check_no_module_twice(target_name, modules, deps_set)
    first = modules.values()[0]

    # The folder holding this target's interfaces, as a path only: each compile's real
    # inputs are the interfaces of the modules it imports.
    own_search_path = cmd_args(
        first.hi,
        parent = len(first.path.split("/")),
        format = "-i{}",
        ignore_artifacts = True,
    )

    # Buck2 freezes the dynamic_output callback and everything it captures, and the rule's
    # ctx (like ctx.actions) cannot be frozen: the closures below capture plain values only.
    def compile_modules(module_actions, imports, outputs):
        order = dependency_order(imports, what = target_name + ": the modules import each other")
        for name in order:
            module = modules[name]
            imported = sorted(reachable(imports, [name]))
            args = cmd_args(
                "-c",
                module.src,
                "-o",
                outputs[module.obj].as_output(),
                "-ohi",
                outputs[module.hi].as_output(),
                # An empty -i drops the default search path (the working directory).
                "-i",
                own_search_path if imported else [],
                dep_search_path,
                [["-package", p] for p in packages],
                flags,
            )
            worker_run(
                module_actions,
                tool = toolchain.compiler,
                args = args,
                category = "haskell_compile",
                identifier = module.path,
                inputs = [module.src] + [modules[m].hi for m in imported] + [dep_interfaces],
            )

    all_outputs = [m.obj for m in modules.values()] + [m.hi for m in modules.values()]
    if len(modules) == 1:
        compile_modules(actions, {first.path.replace("/", "."): []}, {a: a for a in all_outputs})
    else:
        imports_file = actions.declare_output("module_imports.json")
        actions.run(
            cmd_args(
                toolchain.scanner,
                imports_file.as_output(),
                [cmd_args(name + "=", m.src, delimiter = "") for name, m in modules.items()],
            ),
            category = "haskell_scan_imports",
        )

        def dynamic(dynamic_ctx, artifacts, outputs):
            compile_modules(dynamic_ctx.actions, artifacts[imports_file].read_json(), outputs)

        actions.dynamic_output(
            dynamic = [imports_file],
            inputs = srcs,
            outputs = [a.as_output() for a in all_outputs],
            f = dynamic,
        )
    return struct(
        deps = deps_set,
        modules = list(modules.keys()),
        interfaces = [m.hi for m in modules.values()],
        objects = [m.obj for m in modules.values()],
        packages = packages,
        search_path = own_search_path,
    )

def _haskell_library_impl(ctx: AnalysisContext) -> list[Provider]:
    toolchain = ctx.attrs._haskell_toolchain[HaskellToolchainInfo]
    deps = [dep[HaskellLibraryInfo] for dep in ctx.attrs.deps]
    compiled = compile_haskell(
        ctx.actions,
        toolchain = toolchain,
        target_name = ctx.attrs.name,
        srcs = ctx.attrs.srcs,
        packages = ctx.attrs.packages,
        compiler_flags = ctx.attrs.compiler_flags,
        deps = deps,
    )
    archive = ctx.actions.declare_output("lib" + ctx.attrs.name + ".a")
    ctx.actions.run(
        # D: no times, uids or modes in the archive (GNU ar's default only where binutils
        # was built so), or every rebuild would make a new archive and a new link.
        cmd_args(toolchain.archiver, "qcsD", archive.as_output(), compiled.objects),
        category = "haskell_archive",
    )
    node = HaskellLibraryNode(
        archive = archive,
        interfaces = compiled.interfaces,
        search_path = compiled.search_path,
        modules = compiled.modules,
        label = ctx.label.cell + "//" + ctx.label.package + ":" + ctx.label.name,
    )
    info = HaskellLibraryInfo(
        libraries = ctx.actions.tset(
            HaskellLibraryTSet,
            value = node,
            children = [d.libraries for d in deps],
        ),
        packages = compiled.packages,
    )
    return [DefaultInfo(default_output = archive, other_outputs = compiled.interfaces), info]

HASKELL_TOOLCHAIN_ATTR = attrs.default_only(attrs.toolchain_dep(
    providers = [HaskellToolchainInfo],
    default = toolchain_target("haskell"),
    doc = "The Haskell toolchain.",
))

HASKELL_COMMON_ATTRS = {
    "compiler_flags": attrs.list(attrs.string(), default = [], doc = "Extra GHC flags."),
    "deps": attrs.list(
        attrs.dep(providers = [HaskellLibraryInfo]),
        default = [],
        doc = "Libraries whose modules this target imports.",
    ),
    "packages": attrs.list(
        attrs.string(),
        default = [],
        doc = "GHC packages (from GHC's package database) this target uses, such as containers.",
    ),
    "srcs": attrs.list(attrs.source(), default = [], doc = "The .hs files, in any order."),
    "_haskell_toolchain": HASKELL_TOOLCHAIN_ATTR,
}

haskell_library = rule(
    impl = _haskell_library_impl,
    doc = "Compiles Haskell modules, one warm GHC worker action each, into a static archive.",
    attrs = HASKELL_COMMON_ATTRS,
)
