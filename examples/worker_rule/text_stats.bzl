"""An example worker-enabled rule: one text_stats report per target, built on a warm worker."""

load("@prelude//:prelude.bzl", "WorkerToolInfo", "worker_run")

def _text_stats_report_impl(ctx: AnalysisContext) -> list[Provider]:
    report = ctx.actions.declare_output(ctx.attrs.name + ".json")
    worker_run(
        ctx.actions,
        tool = ctx.attrs._tool[WorkerToolInfo],
        args = cmd_args("--out", report.as_output(), ctx.attrs.srcs),
        category = "text_stats",
        inputs = ctx.attrs.srcs,
    )
    return [DefaultInfo(default_output = report)]

text_stats_report = rule(
    impl = _text_stats_report_impl,
    doc = "Summarises text files into a JSON report (lines, words, digests) on a warm worker.",
    attrs = {
        "srcs": attrs.list(attrs.source(), doc = "The text files to summarise."),
        "_tool": attrs.default_only(attrs.exec_dep(
            providers = [WorkerToolInfo],
            default = "root//examples/text_stats:text_stats_worker",
            doc = "The text_stats worker.",
        )),
    },
)
