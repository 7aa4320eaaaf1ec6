"""haskell_toolchain: the GHC worker, the ghc that links, ar, and flags for every compile."""

load("//haskell:haskell_toolchain_providers.bzl", "HaskellToolchainInfo")
load("//worker:worker_tool_providers.bzl", "WorkerToolInfo")

def _haskell_toolchain_impl(ctx: AnalysisContext) -> list[Provider]:
    return [
        DefaultInfo(),
        HaskellToolchainInfo(
            archiver = ctx.attrs.archiver[RunInfo],
            compiler = ctx.attrs.compiler[WorkerToolInfo],
            compiler_flags = ctx.attrs.compiler_flags,
            linker = ctx.attrs.linker[RunInfo],
            package_dbs = ctx.attrs.package_dbs,
            scanner = ctx.attrs.scanner[RunInfo],
        ),
    ]

haskell_toolchain = rule(
    impl = _haskell_toolchain_impl,
    doc = "A Haskell toolchain whose per-module compiles go to a warm GHC worker.",
    is_toolchain_rule = True,
    attrs = {
        "archiver": attrs.exec_dep(providers = [RunInfo], doc = "The ar command."),
        "compiler": attrs.exec_dep(
            providers = [WorkerToolInfo],
            doc = "A worker_tool wrapping the GHC worker, with a cold ghc as its fallback.",
        ),
        "compiler_flags": attrs.list(attrs.string(), default = [], doc = "Flags for every compile."),
        "linker": attrs.exec_dep(providers = [RunInfo], doc = "The ghc that links binaries."),
        "package_dbs": attrs.list(
            attrs.string(),
            default = [],
            doc = "GHC package databases (absolute paths, which Buck2 does not track as " +
                  "inputs) that every compile and every link reads (`-package-db` each, " +
                  "after compiler_flags): where the `packages` of the targets come from " +
                  "when GHC's global database does not hold them.",
        ),
        "scanner": attrs.exec_dep(
            providers = [RunInfo],
            doc = "The import scanner (toolchains/haskell/scan_imports.py).",
        ),
    },
)
