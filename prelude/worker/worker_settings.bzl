"""worker_settings: the one place that reads the [persistent_workers] section of .buckconfig.

Buck2 allows read_root_config only while files load, not during analysis, so each key is
read here as the default of the attribute of the same name; analysis checks the values and
hands them on as a WorkerSettingsInfo. The execution platform (prelude//platforms:platforms)
and every worker_tool depend on the target `<toolchains_cell>//:worker_settings`. The
commands of the toolchains (`runtime`, `python`) are read where those commands are declared,
in the toolchains cell's BUCK file, and `toolchains_cell` by prelude/utils/settings.bzl, to
find this target.
"""

load("//utils:settings.bzl", "SETTINGS", "bool_setting", "check_routing", "check_server", "properties_setting")
load("//worker:worker_settings_providers.bzl", "WorkerSettingsInfo")

# The keys this rule reads; the others are read where they are needed (utils/settings.bzl).
_KEYS = [key for key in SETTINGS if key not in ("runtime", "python", "toolchains_cell")]

def _setting(key: str) -> Attr:
    return attrs.string(
        default = read_root_config("persistent_workers", key, SETTINGS[key]["default"]),
        doc = "[persistent_workers] " + key + ": " + SETTINGS[key]["doc"],
    )

def _remote(ctx: AnalysisContext) -> dict[str, typing.Any]:
    """The runtime config's `remote` object (keys: worker_runtime/config.py)."""
    remote = {"tls": bool_setting("remote_tls", ctx.attrs.remote_tls)}
    for key in ("fallback_local", "cache", "persistent"):
        remote[key] = bool_setting("remote_" + key, getattr(ctx.attrs, "remote_" + key))
    for key in ("endpoint", "instance_name", "credentials_file", "tls_ca_file"):
        value = getattr(ctx.attrs, "remote_" + key)
        if value:
            remote[key] = value
    properties = properties_setting("remote_properties", ctx.attrs.remote_properties)
    if properties:
        remote["properties"] = properties
    return remote

def _worker_settings_impl(ctx: AnalysisContext) -> list[Provider]:
    return [
        DefaultInfo(),
        WorkerSettingsInfo(
            enabled = bool_setting("enabled", ctx.attrs.enabled),
            remote = _remote(ctx),
            routing = check_routing(ctx.attrs.routing),
            server = check_server(ctx.attrs.server),
        ),
    ]

worker_settings = rule(
    impl = _worker_settings_impl,
    doc = "The [persistent_workers] settings of the project, checked, as a WorkerSettingsInfo. " +
          "Declare one, named worker_settings, in the toolchains cell; every attribute " +
          "defaults to the .buckconfig key of the same name.",
    attrs = {key: _setting(key) for key in _KEYS},
)
