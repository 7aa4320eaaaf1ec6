"""ghc_worker_binary: the GHC worker built by Buck2 itself, with a plain (cold) ghc."""

def _ghc_worker_binary_impl(ctx: AnalysisContext) -> list[Provider]:
    exe = ctx.actions.declare_output("ghc-worker")
    build = ctx.actions.declare_output("build", dir = True)
    main = [src for src in ctx.attrs.srcs if src.basename == "Main.hs"]
    if len(main) != 1:
        fail("ghc_worker_binary: srcs must hold exactly one Main.hs")
    ctx.actions.run(
        cmd_args(
            ctx.attrs.ghc[RunInfo],
            "-O1",
            "-threaded",
            "-rtsopts",
            # The same RTS options as toolchains/haskell/ghc-worker (see there for why).
            "-with-rtsopts=-A16m",
            "-package",
            "ghc",
            "-outputdir",
            build.as_output(),
            cmd_args(main[0], parent = 1, format = "-i{}"),
            "-o",
            exe.as_output(),
            main[0],
            hidden = ctx.attrs.srcs,
        ),
        category = "ghc",
    )
    return [DefaultInfo(default_output = exe), RunInfo(args = cmd_args(exe))]

ghc_worker_binary = rule(
    impl = _ghc_worker_binary_impl,
    doc = "The GHC worker, compiled and linked by one plain ghc action.",
    attrs = {
        "ghc": attrs.exec_dep(providers = [RunInfo], doc = "The ghc command."),
        "srcs": attrs.list(attrs.source(), doc = "The worker's .hs files, Main.hs among them."),
    },
)
