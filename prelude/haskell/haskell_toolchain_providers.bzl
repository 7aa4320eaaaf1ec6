"""HaskellToolchainInfo: the tools and flags the Haskell rules compile, archive and link
with, and the `-package-db` arguments of its package databases."""

HaskellToolchainInfo = provider(
    doc = "What the Haskell rules compile, archive and link with.",
    fields = {
        # The `ar` command, for each library's static archive. Never None.
        "archiver": provider_field(RunInfo),
        # The WorkerToolInfo of the GHC worker (its fallback runs a cold ghc). Never None.
        # Typed Any: a .bzl outside the prelude cell is evaluated once per cell that loads
        # it, and a provider type from another cell's evaluation fails a type check.
        "compiler": provider_field(typing.Any),
        # Flags added to every compile; None for none.
        "compiler_flags": provider_field(list[str] | None, default = None),
        # The `ghc` command that links binaries. Never None.
        "linker": provider_field(RunInfo),
        # GHC package databases (paths) that every compile and every link reads, besides
        # GHC's own; None for none.
        "package_dbs": provider_field(list[str] | None, default = None),
        # The import scanner: `scanner OUT.json MODULE=PATH...` writes which modules of a
        # target each one imports. Never None.
        "scanner": provider_field(RunInfo),
    },
)

def package_db_args(toolchain: typing.Any) -> list[str]:
    """`-package-db PATH` for each of the toolchain's package databases.

    The compiles and the link read the same ones. `toolchain` is a HaskellToolchainInfo
    (typed Any, as in compile_haskell)."""
    return [arg for db in (toolchain.package_dbs or []) for arg in ("-package-db", db)]
