"""haskell_library: one compile action per module on a warm GHC worker, and an archive.

Each module of `srcs` is compiled by its own action (`ghc -c` with explicit `-o`/`-ohi`).
A scan action reads the target's import declarations (`toolchains/haskell/scan_imports.py`)
and a `dynamic_output` registers the compiles from it, each after the modules of its
target it imports, with exactly their interfaces (and the deps') as inputs. A module's
name is its path relative to the package, without `.hs` (`Shop/Core/Money.hs` is
`Shop.Core.Money`).
"""

load("//haskell:haskell_toolchain.bzl", "HaskellToolchainInfo")
load("//utils:lists.bzl", "link_order", "unique")
load("//utils:settings.bzl", "toolchain_target")
load("//worker:worker_run.bzl", "worker_run")

HaskellLibraryInfo = provider(
    doc = "A compiled Haskell library, with what its dependents compile and link against.",
    fields = {
        # Static archives (Artifacts) to link, in link order (each before those it needs):
        # this library's and every dependency's.
        "archives": provider_field(typing.Any),
        # Interface files (Artifacts) of this library and every dependency.
        "interfaces": provider_field(typing.Any),
        # GHC packages (str) this library and its dependencies use.
        "packages": provider_field(typing.Any),
        # `-i<dir>` arguments (cmd_args) that find those interfaces.
        "search_path": provider_field(typing.Any),
    },
)

def _module_path(ctx: AnalysisContext, src: typing.Any) -> str:
    # A source's short_path is relative to its package in Buck2, which is exactly the
    # module's path (`Shop/Core/Money.hs`).
    path = src.short_path
    if not path.endswith(".hs"):
        fail(str(ctx.label.name) + ": " + path + " is not a .hs file")
    return path[:-len(".hs")]

def _module_order(target_name: str, imports: dict[str, list[str]]) -> list[str]:
    """The modules, each after those it imports (depth-first); a cycle fails, named."""
    order = []
    state = {}  # module -> "visiting" or "done"
    for root in sorted(imports):
        if state.get(root) == "done":
            continue

        # An explicit stack: Starlark has no recursion.
        stack = [(root, 0)]
        state[root] = "visiting"
        path = [root]
        for _ in range(len(imports) * len(imports) + len(imports) + 1):
            if not stack:
                break
            module, index = stack[-1]
            deps = imports[module]
            if index < len(deps):
                stack[-1] = (module, index + 1)
                dep = deps[index]
                if state.get(dep) == "visiting":
                    cycle = path[path.index(dep):] + [dep]
                    fail(target_name + ": the modules import each other in a cycle: " + " -> ".join(cycle))
                if state.get(dep) != "done":
                    state[dep] = "visiting"
                    stack.append((dep, 0))
                    path.append(dep)
            else:
                stack.pop()
                path.pop()
                state[module] = "done"
                order.append(module)
    return order

def _imported_closure(imports: dict[str, list[str]], module: str) -> list[str]:
    seen = []
    todo = list(imports[module])
    for _ in range(len(imports) * len(imports) + 1):
        if not todo:
            break
        dep = todo.pop()
        if dep not in seen:
            seen.append(dep)
            todo.extend(imports[dep])
    return sorted(seen)

def compile_haskell(
        ctx: AnalysisContext,
        # A HaskellToolchainInfo. Typed Any: Buck2 evaluates this file once per cell whose
        # BUCK files load it, so the provider type of a toolchain declared in another cell
        # is another instance, which an annotation would refuse.
        toolchain: typing.Any,
        deps: list[typing.Any]) -> typing.Any:
    """Compiles ctx.attrs.srcs, one action per module, against `deps` (HaskellLibraryInfo).

    Args:
      ctx: the analysis context of a rule with `srcs`, `packages` and `compiler_flags`.
      toolchain: the HaskellToolchainInfo.
      deps: the HaskellLibraryInfo of every dependency.

    Returns:
      A struct: `objects` and `interfaces` (lists of Artifacts, in `srcs` order),
      `search_path` (the `-i` arguments reaching them and the deps' interfaces) and
      `packages` (every GHC package used, deps' included).
    """
    if not ctx.attrs.srcs:
        fail(str(ctx.label.name) + ": a Haskell target needs srcs")
    packages = unique(ctx.attrs.packages + [p for d in deps for p in d.packages])
    dep_interfaces = unique([hi for d in deps for hi in d.interfaces])
    dep_search_path = [d.search_path for d in deps]
    flags = (toolchain.compiler_flags or []) + ctx.attrs.compiler_flags
    modules = {}  # module name -> struct(src, path, obj, hi)
    for src in ctx.attrs.srcs:
        path = _module_path(ctx, src)
        name = path.replace("/", ".")
        if name in modules:
            fail(str(ctx.label.name) + ": module " + name + " is listed twice")
        modules[name] = struct(
            hi = ctx.actions.declare_output("ifaces/" + path + ".hi"),
            obj = ctx.actions.declare_output("objs/" + path + ".o"),
            path = path,
            src = src,
        )
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
    target_name = str(ctx.label.name)

    def compile_modules(actions, imports, outputs):
        for name in _module_order(target_name, imports):
            module = modules[name]
            imported = _imported_closure(imports, name)
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
                actions,
                tool = toolchain.compiler,
                args = args,
                category = "haskell_compile",
                identifier = module.path,
                inputs = [module.src] + [modules[m].hi for m in imported] + dep_interfaces,
            )

    all_outputs = [m.obj for m in modules.values()] + [m.hi for m in modules.values()]
    if len(modules) == 1:
        compile_modules(ctx.actions, {first.path.replace("/", "."): []}, {a: a for a in all_outputs})
    else:
        imports_file = ctx.actions.declare_output("module_imports.json")
        ctx.actions.run(
            cmd_args(
                toolchain.scanner,
                imports_file.as_output(),
                [cmd_args(name + "=", m.src, delimiter = "") for name, m in modules.items()],
            ),
            category = "haskell_scan_imports",
        )

        def dynamic(dynamic_ctx, artifacts, outputs):
            compile_modules(dynamic_ctx.actions, artifacts[imports_file].read_json(), outputs)

        ctx.actions.dynamic_output(
            dynamic = [imports_file],
            inputs = ctx.attrs.srcs,
            outputs = [a.as_output() for a in all_outputs],
            f = dynamic,
        )
    return struct(
        interfaces = [m.hi for m in modules.values()],
        objects = [m.obj for m in modules.values()],
        packages = packages,
        search_path = cmd_args(own_search_path, dep_search_path),
    )

def _haskell_library_impl(ctx: AnalysisContext) -> list[Provider]:
    toolchain = ctx.attrs._haskell_toolchain[HaskellToolchainInfo]
    deps = [dep[HaskellLibraryInfo] for dep in ctx.attrs.deps]
    compiled = compile_haskell(ctx, toolchain, deps)
    archive = ctx.actions.declare_output("lib" + ctx.attrs.name + ".a")
    ctx.actions.run(
        cmd_args(toolchain.archiver, "qcs", archive.as_output(), compiled.objects),
        category = "haskell_archive",
    )
    info = HaskellLibraryInfo(
        archives = link_order([[archive]] + [d.archives for d in deps]),
        interfaces = unique(compiled.interfaces + [hi for d in deps for hi in d.interfaces]),
        packages = compiled.packages,
        search_path = compiled.search_path,
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
