"""Execution platforms, one per routing, that switch persistent workers on and say where worker requests go."""

load("//utils:settings.bzl", "ROUTINGS", "toolchain_target")
load("//worker:worker_settings_providers.bzl", "WorkerSettingsInfo")

# Buck2's use case for remote actions of the native routing (OSS Buck2 sends it to no
# engine; RE deployments that meter by use case read it).
REMOTE_USE_CASE = "buck2-default"

def executor_config(routing: str, settings: typing.Any) -> typing.Any:
    """The CommandExecutorConfig of the execution platform of `routing`.

    Args:
      routing: one of ROUTINGS.
      settings: the project's [persistent_workers] settings.

    Returns:
      For `native`, Buck2's own remote execution with remote persistent workers (remote
      first; `--prefer-local` and `--local-only` run locally, warm through the runtime);
      for the others, local execution only: worker-runtime forwards remote requests itself.
    """
    if routing != "native":
        return CommandExecutorConfig(
            local_enabled = True,
            remote_enabled = False,
            use_persistent_workers = settings.enabled,
        )

    # [persistent_workers] remote_cache, remote_fallback_local and remote_persistent mean
    # here what they mean to the runtime's routings: the action cache asked and written,
    # a remote failure of the engine's run locally, remote actions as persistent-worker
    # requests.
    cache = settings.remote.get("cache", True)
    return CommandExecutorConfig(
        local_enabled = True,
        remote_enabled = True,
        remote_cache_enabled = cache,
        allow_cache_uploads = cache,
        # Remote unless the command prefers local (--prefer-local, --local-only): the full
        # hybrid would race a local copy of every action against the remote one.
        use_limited_hybrid = True,
        allow_limited_hybrid_fallbacks = settings.remote.get("fallback_local", False),
        use_persistent_workers = settings.enabled,
        use_bazel_protocol_remote_persistent_workers = settings.enabled and
                                                       settings.remote.get("persistent", True),
        remote_execution_properties = settings.remote.get("properties", {}),
        remote_execution_use_case = REMOTE_USE_CASE,
        remote_output_paths = "output_paths",
    )

def _worker_execution_platform_impl(ctx: AnalysisContext) -> list[Provider]:
    settings = ctx.attrs._worker_settings[WorkerSettingsInfo]
    if ctx.attrs.routing not in ROUTINGS:
        fail("routing " + repr(ctx.attrs.routing) + " is not one of " + ", ".join(ROUTINGS))
    value = ctx.attrs.routing_value[ConstraintValueInfo]
    constraints = {value.setting.label: value}
    for extra in ctx.attrs.extra_constraints:
        info = extra[ConstraintValueInfo]
        constraints[info.setting.label] = info
    return [
        DefaultInfo(),
        ExecutionPlatformInfo(
            label = ctx.label.raw_target(),
            configuration = ConfigurationInfo(constraints = constraints, values = {}),
            executor_config = executor_config(ctx.attrs.routing, settings),
        ),
    ]

worker_execution_platform = rule(
    impl = _worker_execution_platform_impl,
    doc = "The execution platform of one routing: its constraint value (which worker tools " +
          "select() on) and the executor config it needs; workers on or off from " +
          "[persistent_workers] enabled.",
    attrs = {
        "extra_constraints": attrs.list(
            attrs.dep(providers = [ConstraintValueInfo]),
            default = [],
            doc = "More constraint values of the platform (OS, CPU...) that toolchains select() on.",
        ),
        "routing": attrs.string(doc = "One of local, remote, auto, race, native."),
        "routing_value": attrs.dep(
            providers = [ConstraintValueInfo],
            doc = "The constraint value of the routing.",
        ),
        # Buck2 analyses the execution platforms in the unbound configuration, and this
        # dependency with them: worker_settings has no select() and no exec deps.
        "_worker_settings": attrs.default_only(attrs.dep(
            providers = [WorkerSettingsInfo],
            default = toolchain_target("worker_settings"),
            doc = "The [persistent_workers] settings: enabled and remote_properties.",
        )),
    },
)

def _persistent_worker_platforms_impl(ctx: AnalysisContext) -> list[Provider]:
    routing = ctx.attrs._worker_settings[WorkerSettingsInfo].routing
    for name in ROUTINGS:
        if name not in ctx.attrs.platforms:
            fail("platforms has no execution platform for routing " + repr(name))
    order = [routing] + [name for name in ROUTINGS if name != routing]
    platforms = [ctx.attrs.platforms[name][ExecutionPlatformInfo] for name in order]
    return [DefaultInfo(), ExecutionPlatformRegistrationInfo(platforms = platforms)]

persistent_worker_platforms = rule(
    impl = _persistent_worker_platforms_impl,
    doc = "The execution platforms of the project, one per routing, the one of " +
          "[persistent_workers] routing first: Buck2 gives each target the first one its " +
          "exec_compatible_with allows. Name it in .buckconfig [build] execution_platforms.",
    attrs = {
        "platforms": attrs.dict(
            attrs.string(),
            attrs.dep(providers = [ExecutionPlatformInfo]),
            doc = "The execution platform of each routing.",
        ),
        "_worker_settings": attrs.default_only(attrs.dep(
            providers = [WorkerSettingsInfo],
            default = toolchain_target("worker_settings"),
            doc = "The [persistent_workers] settings: routing.",
        )),
    },
)
