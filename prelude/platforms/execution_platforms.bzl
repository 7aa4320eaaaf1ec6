"""Execution platforms that switch persistent workers on and say where worker requests go."""

load("//utils:settings.bzl", "ROUTINGS", "bool_setting", "check_routing")

def _persistent_worker_platforms_impl(ctx: AnalysisContext) -> list[Provider]:
    routing = check_routing(ctx.attrs.routing)
    enabled = bool_setting("enabled", ctx.attrs.enabled)
    for name in ROUTINGS:
        if name not in ctx.attrs.routing_values:
            fail("routing_values has no constraint value for routing " + repr(name))
    value = ctx.attrs.routing_values[routing][ConstraintValueInfo]
    constraints = {value.setting.label: value}
    for extra in ctx.attrs.extra_constraints:
        info = extra[ConstraintValueInfo]
        constraints[info.setting.label] = info
    platform = ExecutionPlatformInfo(
        label = ctx.label.raw_target(),
        configuration = ConfigurationInfo(constraints = constraints, values = {}),
        # worker-runtime forwards remote requests itself, so Buck2's executor stays local.
        executor_config = CommandExecutorConfig(
            local_enabled = True,
            remote_enabled = False,
            use_persistent_workers = enabled,
        ),
    )
    return [DefaultInfo(), ExecutionPlatformRegistrationInfo(platforms = [platform])]

persistent_worker_platforms = rule(
    impl = _persistent_worker_platforms_impl,
    doc = "The execution platform of the project: persistent workers on or off, and the " +
          "routing constraint that worker tools select() on. Name it in .buckconfig " +
          "[build] execution_platforms.",
    attrs = {
        "enabled": attrs.string(
            default = "true",
            doc = "[persistent_workers] enabled: true or false.",
        ),
        "extra_constraints": attrs.list(
            attrs.dep(providers = [ConstraintValueInfo]),
            default = [],
            doc = "More constraint values of the platform (OS, CPU...) that toolchains select() on.",
        ),
        "routing": attrs.string(
            default = "local",
            doc = "[persistent_workers] routing: local, remote, auto or race.",
        ),
        "routing_values": attrs.dict(
            attrs.string(),
            attrs.dep(providers = [ConstraintValueInfo]),
            doc = "The constraint value of each routing.",
        ),
    },
)
