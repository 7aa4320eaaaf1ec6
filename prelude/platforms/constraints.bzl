"""constraint_setting and constraint_value: the prelude's own, so that the cell stands alone."""

def _constraint_setting_impl(ctx: AnalysisContext) -> list[Provider]:
    return [DefaultInfo(), ConstraintSettingInfo(label = ctx.label.raw_target())]

constraint_setting = rule(
    impl = _constraint_setting_impl,
    doc = "A dimension of configuration, such as where worker requests go.",
    attrs = {},
    is_configuration_rule = True,
)

def _constraint_value_impl(ctx: AnalysisContext) -> list[Provider]:
    setting = ctx.attrs.setting[ConstraintSettingInfo]
    value = ConstraintValueInfo(setting = setting, label = ctx.label.raw_target())
    return [
        DefaultInfo(),
        value,
        ConfigurationInfo(constraints = {setting.label: value}, values = {}),
    ]

constraint_value = rule(
    impl = _constraint_value_impl,
    doc = "One value of a constraint_setting; usable as a select() key.",
    attrs = {
        "setting": attrs.dep(
            providers = [ConstraintSettingInfo],
            doc = "The constraint_setting this is a value of.",
        ),
    },
    is_configuration_rule = True,
)
