"""A Bazel rule that compiles Java on a persistent worker, for the javac worker's conformance test."""

def _javac_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name + "_classes")
    args = ctx.actions.args()
    args.add("-d", out.path)
    args.add_all(ctx.files.srcs)
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    reqs = {"supports-workers": "1"}
    if ctx.attr.json:
        reqs["requires-worker-protocol"] = "json"
    if ctx.attr.multiplex:
        reqs["supports-multiplex-workers"] = "1"
    ctx.actions.run(
        executable = ctx.executable._worker,
        arguments = [args],
        inputs = ctx.files.srcs,
        outputs = [out],
        mnemonic = "Javac",
        execution_requirements = reqs,
    )
    return [DefaultInfo(files = depset([out]))]

javac_compile = rule(
    implementation = _javac_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = [".java"]),
        "json": attr.bool(default = False),
        "multiplex": attr.bool(default = False),
        "_worker": attr.label(default = "//tools:worker.sh", executable = True, cfg = "exec", allow_single_file = True),
    },
)
