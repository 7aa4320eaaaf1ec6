"""The [persistent_workers] settings: allowed values and checks (for worker_settings, which
reads them), and the one key needed before any target can be named: toolchains_cell."""

# Where worker requests go; the runtime's config key `routing` takes the same values.
ROUTINGS = ["local", "remote", "auto", "race"]

# The cell holding the toolchain targets the rules default to (java, haskell,
# worker_runtime, worker_settings): `toolchains` here; another name where this prelude is
# mounted beside Buck2's bundled one, whose demo toolchains already define
# `toolchains//:java`.
TOOLCHAINS_CELL = read_root_config("persistent_workers", "toolchains_cell", "toolchains")

def toolchain_target(name: str) -> str:
    """The label of toolchain target `name` in [persistent_workers] toolchains_cell.

    Args:
      name: the target's name, e.g. "java".

    Returns:
      The label, e.g. "toolchains//:java".
    """
    return TOOLCHAINS_CELL + "//:" + name

def bool_setting(key: str, value: str) -> bool:
    """Reads a boolean [persistent_workers] value.

    Args:
      key: the key's name in [persistent_workers], for the error message.
      value: the value read with read_root_config.

    Returns:
      The value as a bool; anything but true/false fails analysis naming the key.
    """
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    fail("[persistent_workers] " + key + " = " + repr(value) + " is not a boolean: use true or false")

def check_routing(value: str) -> str:
    """Checks a [persistent_workers] routing value.

    Args:
      value: the value read with read_root_config.

    Returns:
      The value; anything but one of ROUTINGS fails analysis naming the key.
    """
    if value not in ROUTINGS:
        fail("[persistent_workers] routing = " + repr(value) + " is not one of " + ", ".join(ROUTINGS))
    return value

def properties_setting(key: str, value: str) -> dict[str, str]:
    """Reads a [persistent_workers] list of platform properties.

    Args:
      key: the key's name in [persistent_workers], for the error message.
      value: the value read with read_root_config: `name=value` pairs, comma-separated.

    Returns:
      The properties by name; an entry without `=` or with an empty name fails analysis
      naming the key.
    """
    properties = {}
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, item = entry.partition("=")
        if not sep or not name.strip():
            fail("[persistent_workers] " + key + ": " + repr(entry) + " is not name=value")
        properties[name.strip()] = item.strip()
    return properties
