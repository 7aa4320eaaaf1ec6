"""haskell_library: one compile action per module on a warm GHC worker, and an archive.

Each module of `srcs` is compiled by its own action (`ghc -c` with explicit `-o`/`-ohi`),
in the order `srcs` lists them: a module may import the modules listed before it in its
target and every module of its deps (buildifier sorts `srcs` lists: put a
`# do not sort` comment on the line before `srcs`). A module's name is its path relative
to the package, without `.hs` (`Shop/Core/Money.hs` is `Shop.Core.Money`).
"""

load("//haskell:haskell_toolchain.bzl", "HaskellToolchainInfo")
load("//utils:lists.bzl", "unique")
load("//worker:worker_run.bzl", "worker_run")

HaskellLibraryInfo = provider(
    doc = "A compiled Haskell library, with what its dependents compile and link against.",
    fields = {
        # Static archives (Artifacts) to link: this library's and every dependency's.
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
    prefix = ctx.label.package + "/" if ctx.label.package else ""
    path = src.short_path
    if not path.startswith(prefix) or not path.endswith(".hs"):
        fail(str(ctx.label.name) + ": " + path + " is not a .hs file under the package")
    return path[len(prefix):-len(".hs")]

def compile_haskell(
        ctx: AnalysisContext,
        toolchain: HaskellToolchainInfo,
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
    objects = []
    interfaces = []
    own_search_path = []
    for src in ctx.attrs.srcs:
        path = _module_path(ctx, src)
        obj = ctx.actions.declare_output("objs/" + path + ".o")
        hi = ctx.actions.declare_output("ifaces/" + path + ".hi")
        args = cmd_args(
            "-c",
            src,
            "-o",
            obj.as_output(),
            "-ohi",
            hi.as_output(),
            # An empty -i drops the default search path (the working directory).
            "-i",
            own_search_path,
            dep_search_path,
            [["-package", p] for p in packages],
            flags,
        )
        worker_run(
            ctx.actions,
            tool = toolchain.compiler,
            args = args,
            category = "haskell_compile",
            identifier = path,
            inputs = [src] + interfaces + dep_interfaces,
        )
        if not own_search_path:
            # The folder holding this target's interfaces, found from the first one.
            own_search_path = [cmd_args(hi, parent = len(path.split("/")), format = "-i{}")]
        objects.append(obj)
        interfaces.append(hi)
    return struct(
        interfaces = interfaces,
        objects = objects,
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
        archives = unique([archive] + [a for d in deps for a in d.archives]),
        interfaces = unique(compiled.interfaces + [hi for d in deps for hi in d.interfaces]),
        packages = compiled.packages,
        search_path = compiled.search_path,
    )
    return [DefaultInfo(default_output = archive, other_outputs = compiled.interfaces), info]

HASKELL_TOOLCHAIN_ATTR = attrs.default_only(attrs.toolchain_dep(
    providers = [HaskellToolchainInfo],
    default = "toolchains//:haskell",
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
    "srcs": attrs.list(
        attrs.source(),
        default = [],
        doc = "The .hs files, each module after the modules of this target it imports.",
    ),
    "_haskell_toolchain": HASKELL_TOOLCHAIN_ATTR,
}

haskell_library = rule(
    impl = _haskell_library_impl,
    doc = "Compiles Haskell modules, one warm GHC worker action each, into a static archive.",
    attrs = HASKELL_COMMON_ATTRS,
)
