"""WorkerSettingsInfo: the project's [persistent_workers] settings, read and checked once."""

WorkerSettingsInfo = provider(
    doc = "The [persistent_workers] section of .buckconfig, as the execution platform and " +
          "every worker_tool use it. Made by the worker_settings rule; a bad value fails " +
          "that target's analysis, naming the key.",
    fields = {
        # [persistent_workers] enabled: whether the execution platform turns persistent
        # workers on (False: every worker action runs its fallback one-shot).
        "enabled": provider_field(bool),
        # The runtime config's `remote` object, from the remote_* keys: always `tls`,
        # `fallback_local`, `cache` and `persistent` (bools); `endpoint`, `instance_name`,
        # `credentials_file`, `tls_ca_file` (str) and `properties` (dict of str) only
        # when set. Never None.
        "remote": provider_field(dict[str, typing.Any]),
        # [persistent_workers] routing: "local", "remote", "auto" or "race"; the execution
        # platform carries the matching constraint value, which worker tools select() on.
        "routing": provider_field(str),
        # [persistent_workers] server: "grpcio" or "h2", the runtime config's `server`.
        "server": provider_field(str),
    },
)
