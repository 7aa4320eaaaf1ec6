"""A Bazel rule compiling one Haskell module on a persistent worker, for the GHC worker's
conformance test: `ghc -c` with explicit outputs and the deps' interface folders."""

HsModuleInfo = provider(
    doc = "A compiled module: its interface and those of its deps, and their root folders.",
    fields = ["interfaces", "roots"],
)

def _ghc_module_impl(ctx):
    path = ctx.attr.module.replace(".", "/")
    obj = ctx.actions.declare_file(ctx.label.name + "/" + path + ".o")
    hi = ctx.actions.declare_file(ctx.label.name + "/" + path + ".hi")
    root = hi.path[:-len("/" + path + ".hi")]
    interfaces = depset([hi], transitive = [d[HsModuleInfo].interfaces for d in ctx.attr.deps])
    roots = [root]
    for dep in ctx.attr.deps:
        roots.extend([r for r in dep[HsModuleInfo].roots if r not in roots])
    args = ctx.actions.args()
    args.add_all(["-c", ctx.file.src.path, "-o", obj.path, "-ohi", hi.path, "-i"])
    args.add_all(["-i" + r for r in roots[1:]])
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    ctx.actions.run(
        executable = ctx.executable._worker,
        arguments = [args],
        inputs = depset([ctx.file.src], transitive = [d[HsModuleInfo].interfaces for d in ctx.attr.deps]),
        outputs = [obj, hi],
        mnemonic = "GhcCompile",
        execution_requirements = {"supports-workers": "1"},
    )
    return [DefaultInfo(files = depset([obj, hi])), HsModuleInfo(interfaces = interfaces, roots = roots)]

ghc_module = rule(
    implementation = _ghc_module_impl,
    attrs = {
        "deps": attr.label_list(providers = [HsModuleInfo]),
        "module": attr.string(mandatory = True),
        "src": attr.label(allow_single_file = [".hs"], mandatory = True),
        "_worker": attr.label(default = "//tools:worker.sh", executable = True, cfg = "exec", allow_single_file = True),
    },
)
