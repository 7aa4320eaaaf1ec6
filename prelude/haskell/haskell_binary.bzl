"""haskell_binary: the Main module compiled like a library's modules, then linked by ghc."""

load("//haskell:haskell_library.bzl", "HASKELL_COMMON_ATTRS", "compile_haskell")
load("//haskell:haskell_providers.bzl", "HaskellLibraryInfo", "link_args")
load("//haskell:haskell_toolchain_providers.bzl", "HaskellToolchainInfo", "package_db_args")

# The outputs compile_haskell and worker_run declare at the top of a target's output
# directory: a binary of one of these names would be a file where they need a directory.
_RESERVED_NAMES = ["objs", "ifaces", "haskell_compile", "module_imports.json"]

def _haskell_binary_impl(ctx: AnalysisContext) -> list[Provider]:
    if ctx.attrs.name in _RESERVED_NAMES:
        # Buck2 refuses the clash itself, as "conflicting output locations".
        fail("haskell_binary " + ctx.attrs.name + ": the program would be named as the " +
             "directory its compile outputs go in; rename the target (none of " +
             ", ".join(_RESERVED_NAMES) + ")")
    toolchain = ctx.attrs._haskell_toolchain[HaskellToolchainInfo]
    compiled = compile_haskell(
        ctx.actions,
        toolchain = toolchain,
        target_name = ctx.attrs.name,
        srcs = ctx.attrs.srcs,
        packages = ctx.attrs.packages,
        compiler_flags = ctx.attrs.compiler_flags,
        deps = [dep[HaskellLibraryInfo] for dep in ctx.attrs.deps],
    )
    exe = ctx.actions.declare_output(ctx.attrs.name)
    ctx.actions.run(
        cmd_args(
            toolchain.linker,
            "-o",
            exe.as_output(),
            compiled.objects,
            link_args(compiled.deps),
            # The databases the compiles read: the link finds the same packages there.
            package_db_args(toolchain),
            [["-package", p] for p in compiled.packages],
            # After everything else: -threaded, -rtsopts, -with-rtsopts and -optl options
            # are the link's, which compiler_flags never reach.
            ctx.attrs.linker_flags,
        ),
        category = "haskell_link",
    )
    return [DefaultInfo(default_output = exe), RunInfo(args = cmd_args(exe))]

haskell_binary = rule(
    impl = _haskell_binary_impl,
    doc = "A Haskell program: its modules (Main among them) and its deps' archives, linked.",
    attrs = HASKELL_COMMON_ATTRS | {
        "linker_flags": attrs.list(
            attrs.string(),
            default = [],
            doc = "Flags for the link (ghc linking the program): `-threaded`, `-rtsopts`, " +
                  "`-with-rtsopts=...`, `-optl...`. compiler_flags are the compiles' only.",
        ),
    },
)
