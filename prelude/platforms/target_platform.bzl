"""target_platform: a target platform (PlatformInfo), for .buckconfig's detector spec.

Without a target platform Buck2 configures targets with its `<unspecified>` platform, in
which any select() with keys other than DEFAULT is an error. A worker_tool's routing is
such a select(), so a tool built directly (`buck2 build //...`) needs a platform.
"""

def _target_platform_impl(ctx: AnalysisContext) -> list[Provider]:
    constraints = {}
    for value in ctx.attrs.constraint_values:
        info = value[ConstraintValueInfo]
        constraints[info.setting.label] = info
    return [
        DefaultInfo(),
        PlatformInfo(
            # Buck2 checks that a platform's label names the platform target itself.
            label = str(ctx.label.raw_target()),
            configuration = ConfigurationInfo(constraints = constraints, values = {}),
        ),
    ]

target_platform = rule(
    impl = _target_platform_impl,
    doc = "A target platform with the given constraint values (none: every select() takes DEFAULT).",
    attrs = {
        "constraint_values": attrs.list(
            attrs.dep(providers = [ConstraintValueInfo]),
            default = [],
            doc = "The platform's constraint values.",
        ),
    },
    is_configuration_rule = True,
)
