"""worker_settings: the one place that reads the [persistent_workers] section of .buckconfig.

Buck2 allows read_root_config only while files load, not during analysis, so each key is
read here as the default of the attribute of the same name; analysis checks the values and
hands them on as a WorkerSettingsInfo. The execution platform (prelude//platforms:platforms)
and every worker_tool depend on the target `<toolchains_cell>//:worker_settings`. The
commands of the toolchains (`runtime`, `python`) are read where those commands are declared,
in the toolchains cell's BUCK file, and `toolchains_cell` by prelude/utils/settings.bzl, to
find this target.
"""

load("//utils:settings.bzl", "bool_setting", "check_routing", "properties_setting")
load("//worker:worker_settings_providers.bzl", "WorkerSettingsInfo")

def _setting(key: str, default: str, doc: str) -> Attr:
    return attrs.string(
        default = read_root_config("persistent_workers", key, default),
        doc = "[persistent_workers] " + key + ": " + doc,
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
        ),
    ]

worker_settings = rule(
    impl = _worker_settings_impl,
    doc = "The [persistent_workers] settings of the project, checked, as a WorkerSettingsInfo. " +
          "Declare one, named worker_settings, in the toolchains cell; every attribute " +
          "defaults to the .buckconfig key of the same name.",
    attrs = {
        "enabled": _setting("enabled", "true", "whether the execution platform turns persistent workers on."),
        "remote_cache": _setting("remote_cache", "true", "false marks remote actions do_not_cache."),
        "remote_credentials_file": _setting("remote_credentials_file", "", "a file with the bearer token."),
        "remote_endpoint": _setting("remote_endpoint", "", "the REAPI server, e.g. grpcs://host:443."),
        "remote_fallback_local": _setting("remote_fallback_local", "false", "run locally when the remote fails."),
        "remote_instance_name": _setting("remote_instance_name", "", "the REAPI instance (the tenant)."),
        "remote_persistent": _setting("remote_persistent", "true", "false sends plain one-shot actions."),
        "remote_properties": _setting("remote_properties", "", "the platform's properties, name=value,..."),
        "remote_tls": _setting("remote_tls", "false", "true or false."),
        "remote_tls_ca_file": _setting("remote_tls_ca_file", "", "PEM roots to trust (default: the system's)."),
        "routing": _setting("routing", "local", "where worker requests go: local, remote, auto or race."),
    },
)
