"""The Haskell toolchain: the GHC worker, the ghc that links, ar, and flags for every compile."""

load("//worker:providers.bzl", "WorkerToolInfo")

HaskellToolchainInfo = provider(
    doc = "What the Haskell rules compile, archive and link with.",
    fields = {
        # The `ar` command (a RunInfo), for each library's static archive.
        "archiver": provider_field(typing.Any),
        # The WorkerToolInfo of the GHC worker (its fallback runs a cold ghc).
        "compiler": provider_field(typing.Any),
        # Flags added to every compile (a list of str, or None).
        "compiler_flags": provider_field(typing.Any, default = None),
        # The `ghc` command (a RunInfo) that links binaries.
        "linker": provider_field(typing.Any),
        # The import scanner (a RunInfo): `scanner OUT.json MODULE=PATH...` writes which
        # modules of a target each one imports.
        "scanner": provider_field(typing.Any),
    },
)

def _haskell_toolchain_impl(ctx: AnalysisContext) -> list[Provider]:
    return [
        DefaultInfo(),
        HaskellToolchainInfo(
            archiver = ctx.attrs.archiver[RunInfo],
            compiler = ctx.attrs.compiler[WorkerToolInfo],
            compiler_flags = ctx.attrs.compiler_flags,
            linker = ctx.attrs.linker[RunInfo],
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
        "scanner": attrs.exec_dep(
            providers = [RunInfo],
            doc = "The import scanner (toolchains/haskell/scan_imports.py).",
        ),
    },
)
