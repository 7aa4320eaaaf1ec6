"""haskell_binary: the Main module compiled like a library's modules, then linked by ghc."""

load(
    "//haskell:haskell_library.bzl",
    "HASKELL_COMMON_ATTRS",
    "HaskellLibraryInfo",
    "compile_haskell",
)
load("//haskell:haskell_toolchain.bzl", "HaskellToolchainInfo")
load("//utils:lists.bzl", "link_order")

def _haskell_binary_impl(ctx: AnalysisContext) -> list[Provider]:
    toolchain = ctx.attrs._haskell_toolchain[HaskellToolchainInfo]
    deps = [dep[HaskellLibraryInfo] for dep in ctx.attrs.deps]
    compiled = compile_haskell(ctx, toolchain, deps)
    archives = link_order([d.archives for d in deps])
    exe = ctx.actions.declare_output(ctx.attrs.name)
    ctx.actions.run(
        cmd_args(
            toolchain.linker,
            "-o",
            exe.as_output(),
            compiled.objects,
            # Each library before the ones it needs (ghc passes -optl options after its
            # package libraries, so a linker group cannot be used here).
            archives,
            [["-package", p] for p in compiled.packages],
        ),
        category = "haskell_link",
    )
    return [DefaultInfo(default_output = exe), RunInfo(args = cmd_args(exe))]

haskell_binary = rule(
    impl = _haskell_binary_impl,
    doc = "A Haskell program: its modules (Main among them) and its deps' archives, linked.",
    attrs = HASKELL_COMMON_ATTRS,
)
