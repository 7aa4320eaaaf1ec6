"""The remote persistent worker convention (Bazel's, honoured by BuildBuddy and others),
as both sides of it apply it here.

- ``Command.arguments`` = the backend's startup arguments + the request's ``@argfile``,
  so a server that knows nothing of workers still runs the action one-shot, correctly.
- ``persistentWorkerKey``: a fingerprint of the tool files' digests, the startup
  arguments (``--persistent_worker`` added) and the environment (less PER_ACTION_ENV); on both the Action's and
  the Command's platform. ``persistentWorkerProtocol`` only when it is ``json``.
- Tool files carry the node property ``bazel_tool_input``. Buck2 marks none: for such an
  action the tool files are those its startup arguments name (``named_tool_files``).
- A server splits the arguments at the first flag file (``@x``, ``-flagfile=x``,
  ``--flagfile=x``) into startup arguments and request arguments, and never trusts the
  client's key: it recomputes it from what it received.
- The request's ``WorkRequest.arguments`` are its arguments with the ``@argfile``s expanded
  by the project's one rule (docs/argfiles.md, worker_runtime.protocol.argfiles), read
  only from under the action's input root; ``--flagfile=``/``-flagfile=`` pass through to
  the worker unexpanded, as Bazel sends them.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence

from worker_runtime.backends.key import PERSISTENT_WORKER_FLAG, WorkerKey
from worker_runtime.envelope import ENVELOPE_ENV
from worker_runtime.protocol.argfiles import expand_argfiles

KEY_PROPERTY = "persistentWorkerKey"
PROTOCOL_PROPERTY = "persistentWorkerProtocol"
#: Ours, not the convention's: "true" when the worker takes concurrent requests (request
#: ids, sandbox_dir per request). Sent only for multiplex backends; not part of the key.
MULTIPLEX_PROPERTY = "persistentWorkerMultiplex"
TOOL_INPUT_PROPERTY = "bazel_tool_input"

#: Variables that differ per action, not per worker: Buck2 sets ``BUCK_SCRATCH_PATH`` on
#: every action, remote ones too, and ``worker_run`` names each action's envelope. A
#: persistent worker never sees them (a WorkRequest carries no environment), so they are
#: left out of its environment and key: with them no two actions would share a worker.
PER_ACTION_ENV = frozenset({"BUCK_SCRATCH_PATH", ENVELOPE_ENV})

_FLAGFILE = re.compile(r"^(?:@|--?flagfile=)(.+)$")


def split_arguments(arguments: Sequence[str]) -> tuple[list[str], list[str]]:
    """(startup arguments, request arguments): the request's start at the first flag file.
    A command with no flag file is not a worker request: ([], all of it) is returned and
    the caller runs it one-shot."""
    for index, argument in enumerate(arguments):
        if _FLAGFILE.match(argument) and not argument.startswith("@@"):
            return list(arguments[:index]), list(arguments[index:])
    return [], list(arguments)


def request_arguments(arguments: Sequence[str], root: str) -> list[str]:
    """The WorkRequest arguments of a remote action's request arguments: ``@argfile``s
    expanded by the one rule, each a relative path under ``root`` (the action's input
    root), nested ones too. Raises RequestError naming a file it cannot expand."""
    return expand_argfiles(list(arguments), root, confined=True)


def worker_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """The part of an action's environment that a persistent worker starts with (and that
    is part of its key): all of it but PER_ACTION_ENV."""
    return {name: value for name, value in environment.items() if name not in PER_ACTION_ENV}


def worker_key(
    tool_files: Iterable[tuple[str, str]],
    startup_arguments: Sequence[str],
    environment: Mapping[str, str],
    protocol: str,
) -> str:
    """The persistentWorkerKey: the ``digest`` of the WorkerKey of these tool files (path,
    digest), startup arguments, environment and wire protocol."""
    startup = tuple(a for a in startup_arguments if a != PERSISTENT_WORKER_FLAG)
    key = WorkerKey(
        startup,
        tuple(sorted(worker_environment(environment).items())),
        protocol,
        False,
        tuple(sorted(tool_files)),
    )
    return key.digest


def named_tool_files(
    startup_arguments: Sequence[str], files: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The tool files of an action that marks none (Buck2 marks no ``bazel_tool_input``):
    the input root's files (path, digest) that its startup arguments name, a named
    directory standing for every file under it. What a startup command reads without
    naming it (a launcher's sibling jar) is not found this way: name it, or mark it."""
    named = set()
    for argument in startup_arguments:
        try:
            named.add(safe_relative_path(argument, "startup argument"))
        except UnsafePathError:
            continue  # an absolute path, a flag: not a file of the input root
    return sorted(
        (path, digest)
        for path, digest in files
        if path in named or any(path.startswith(f"{name}/") for name in named)
    )


class UnsafePathError(ValueError):
    """A path from a request or an action that would leave the directory it belongs in."""


def safe_relative_path(path: str, what: str) -> str:
    """``path`` normalised, if it stays under its root: relative, no ``..`` that escapes,
    not empty. Otherwise UnsafePathError naming ``what`` it was."""
    if not path or path.startswith("/") or "\x00" in path:
        raise UnsafePathError(f"{what} {path!r} must be a non-empty relative path")
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../") or normal == ".":
        raise UnsafePathError(f"{what} {path!r} leaves the root it must stay under")
    if any(part == ".." for part in path.split("/")):
        raise UnsafePathError(f"{what} {path!r} contains `..`; paths must stay under the root")
    return normal
