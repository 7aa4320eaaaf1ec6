"""Execution platforms that switch persistent workers on and say where worker requests go."""

load("//utils:settings.bzl", "ROUTINGS", "toolchain_target")
load("//worker:worker_settings_providers.bzl", "WorkerSettingsInfo")

def _persistent_worker_platforms_impl(ctx: AnalysisContext) -> list[Provider]:
    settings = ctx.attrs._worker_settings[WorkerSettingsInfo]
    for name in ROUTINGS:
        if name not in ctx.attrs.routing_values:
            fail("routing_values has no constraint value for routing " + repr(name))
    value = ctx.attrs.routing_values[settings.routing][ConstraintValueInfo]
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
            use_persistent_workers = settings.enabled,
        ),
    )
    return [DefaultInfo(), ExecutionPlatformRegistrationInfo(platforms = [platform])]

persistent_worker_platforms = rule(
    impl = _persistent_worker_platforms_impl,
    doc = "The execution platform of the project: persistent workers on or off, and the " +
          "routing constraint that worker tools select() on, both from [persistent_workers] " +
          "(through the worker_settings target). Name it in .buckconfig [build] execution_platforms.",
    attrs = {
        "extra_constraints": attrs.list(
            attrs.dep(providers = [ConstraintValueInfo]),
            default = [],
            doc = "More constraint values of the platform (OS, CPU...) that toolchains select() on.",
        ),
        "routing_values": attrs.dict(
            attrs.string(),
            attrs.dep(providers = [ConstraintValueInfo]),
            doc = "The constraint value of each routing.",
        ),
        # Buck2 analyses the execution platforms in the unbound configuration, and this
        # dependency with them: worker_settings has no select() and no exec deps.
        "_worker_settings": attrs.default_only(attrs.dep(
            providers = [WorkerSettingsInfo],
            default = toolchain_target("worker_settings"),
            doc = "The [persistent_workers] settings: enabled and routing.",
        )),
    },
)
