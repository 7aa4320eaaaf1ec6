"""A Buck2 worker request as a REAPI Action, following the remote persistent worker
convention: the backend's command + the request's @argfile as arguments, the request's
inputs plus the worker's tool files (marked) as the input root, the envelope's outputs as
output paths, and the worker key on both platforms."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import duration_pb2

from worker_runtime.config import RuntimeConfig
from worker_runtime.digests import DigestCache
from worker_runtime.envelope import Envelope
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.remote.convention import (
    KEY_PROPERTY,
    MULTIPLEX_PROPERTY,
    PROTOCOL_PROPERTY,
    TOOL_INPUT_PROPERTY,
    safe_relative_path,
    worker_key,
)
from worker_runtime.remote.merkle import (
    Blobs,
    build_input_root,
    store_message,
)


@dataclass(frozen=True)
class BuiltAction:
    action: re_pb2.Action
    digest: re_pb2.Digest
    command: re_pb2.Command
    #: Output paths (relative to the project root), as the Command lists them.
    outputs: tuple[str, ...]
    key: str


def platform(properties: Mapping[str, str]) -> re_pb2.Platform:
    """Properties sorted by name then value, as the spec requires."""
    result = re_pb2.Platform()
    for name, value in sorted(properties.items()):
        result.properties.add(name=name, value=value)
    return result


def build_action(
    config: RuntimeConfig,
    envelope: Envelope,
    environment: Mapping[str, str],
    root: Path,
    cache: DigestCache,
    blobs: Blobs,
    extra_properties: Mapping[str, str] | None = None,
    timeout_s: int = 0,
    persistent: bool = True,
    cacheable: bool = True,
) -> BuiltAction:
    """The Action for one request; every blob it needs is added to ``blobs``."""
    tools = sorted(set(config.tool_inputs))
    tool_digests = []
    for tool in tools:
        digest = cache.digest(str(root / tool))
        if digest is None:
            raise FileNotFoundError(f"tool input {tool} is missing under {root}")
        tool_digests.append((tool, digest))
    startup = list(config.command)
    key = worker_key(tool_digests, startup, environment, config.protocol)
    # The convention's properties are computed here, never taken from the config.
    reserved = {KEY_PROPERTY, PROTOCOL_PROPERTY, MULTIPLEX_PROPERTY, TOOL_INPUT_PROPERTY}
    properties = {k: v for k, v in (extra_properties or {}).items() if k not in reserved}
    if persistent:  # else a plain action: the server runs it one-shot
        properties[KEY_PROPERTY] = key
        if config.protocol != "proto":
            properties[PROTOCOL_PROPERTY] = config.protocol
        if config.multiplex:
            properties[MULTIPLEX_PROPERTY] = "true"
    outputs = tuple(sorted({safe_relative_path(o, "output path") for o in envelope.outputs}))
    command = re_pb2.Command(
        arguments=[*startup, f"@{envelope.argfile}"],
        output_paths=list(outputs),
        platform=platform(properties),
    )
    for name, value in sorted(environment.items()):
        command.environment_variables.add(name=name, value=value)
    files = [(envelope.argfile, root / envelope.argfile)]
    files += [(path, root / path) for path in envelope.inputs]
    files += [(tool, root / tool) for tool in tools]
    unique = sorted(dict(files).items())
    input_root = build_input_root(unique, set(tools), cache, blobs)
    action = re_pb2.Action(
        command_digest=store_message(command, blobs),
        input_root_digest=input_root,
        platform=platform(properties),
        do_not_cache=not cacheable,
    )
    if timeout_s > 0:
        action.timeout.CopyFrom(duration_pb2.Duration(seconds=timeout_s))
    return BuiltAction(action, store_message(action, blobs), command, outputs, key)
