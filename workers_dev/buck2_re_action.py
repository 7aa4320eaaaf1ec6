"""A remote persistent worker action built the way Buck2 builds one, for the tests that
stand in for Buck2's RE client (CI has no Buck2). From Buck2's
app/buck2_execute/src/execute/command_executor.rs (`prepare_action`, `re_create_action`,
with `use_bazel_protocol_remote_persistent_workers`) and
app/buck2_action_impl/src/actions/impls/run.rs:

- ``Command.arguments`` is the worker's exe followed by the request's arguments, each of
  which must be an ``@argfile`` or a ``-flagfile=``/``--flagfile=`` (Buck2 refuses any
  other);
- ``persistentWorkerKey`` is Buck2's own digest of the exe's artifacts, added to the
  platform's properties, which travel on ``Command.platform`` only (not on the Action);
- no input carries ``bazel_tool_input``; the exe's artifacts are inputs like any other;
- the environment is the action's own, plus ``BUCK_SCRATCH_PATH``, a directory of its
  own under ``buck-out/v2/tmp`` (`prepare_scratch_path`): it differs for every action.
  Buck2 sends no ``PATH``;
- outputs go in ``output_paths``: the execution platform of routing native sets
  ``remote_output_paths = "output_paths"`` (prelude/platforms/execution_platforms.bzl);
- with persistent workers off (``buck2_key=None``) the same action is a plain one: the
  RunInfo + the arguments, no key, any arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from worker_runtime.digests import DigestCache
from worker_runtime.proto import remote_execution_pb2 as re_pb2
from worker_runtime.remote.action import BuiltAction, platform
from worker_runtime.remote.convention import KEY_PROPERTY
from worker_runtime.remote.merkle import (
    Blobs,
    build_input_root,
    store_message,
)


class Buck2Refuses(ValueError):
    """What Buck2 itself would refuse before sending the action."""


def buck2_action(
    root: Path,
    *,
    exe: Sequence[str],
    arguments: Sequence[str],
    inputs: Sequence[str],
    outputs: Sequence[str],
    buck2_key: str | None,
    blobs: Blobs,
    environment: Mapping[str, str] | None = None,
    properties: Mapping[str, str] | None = None,
) -> BuiltAction:
    """The Action for ``exe`` + ``arguments`` over ``inputs`` (paths under ``root``, the
    exe's artifacts among them); every blob it needs is added to ``blobs``. ``buck2_key``
    None: as Buck2 sends it with persistent workers off."""
    for argument in arguments if buck2_key is not None else ():
        if not argument.startswith(("@", "-flagfile", "--flagfile")):
            raise Buck2Refuses(
                "Remote persistent worker arguments must be passed as `@argfile`, "
                "`-flagfile=argfile`, or `--flagfile=argfile`."
            )
    command = re_pb2.Command(
        arguments=[*exe, *arguments],
        platform=platform(
            {**(properties or {}), **({KEY_PROPERTY: buck2_key} if buck2_key is not None else {})}
        ),
        output_paths=list(outputs),
    )
    scratch = hashlib.sha256("\0".join(arguments).encode()).hexdigest()[:16]
    env = {"BUCK_SCRATCH_PATH": f"buck-out/v2/tmp/root/{scratch}/__action__", **(environment or {})}
    for name, value in sorted(env.items()):
        command.environment_variables.add(name=name, value=value)
    input_root = build_input_root(
        sorted((path, root / path) for path in inputs), set(), DigestCache(), blobs
    )
    action = re_pb2.Action(
        command_digest=store_message(command, blobs), input_root_digest=input_root
    )
    key = buck2_key or ""
    return BuiltAction(action, store_message(action, blobs), command, tuple(outputs), key)
