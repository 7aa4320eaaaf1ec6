"""The envelope worker_run (prelude/worker/worker_run.bzl) attaches to every worker action:
a JSON file, named by the action's ``WORKER_RUNTIME_ENVELOPE`` variable, that lists the
request's @argfile, its input files and its outputs. Its reader, and the one writer that
Python code (the demo, tests, benchmarks) uses; the prelude writes the same JSON."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from worker_runtime.errors import RequestError

ENVELOPE_ENV = "WORKER_RUNTIME_ENVELOPE"
SUPPORTED_VERSION = 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """Paths are as Buck2 wrote them: relative to the project root (the worker's cwd)."""

    argfile: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def envelope_json(envelope: Envelope) -> str:
    """The envelope as the prelude writes it."""
    return json.dumps(
        {
            "argfile": envelope.argfile,
            "inputs": list(envelope.inputs),
            "outputs": list(envelope.outputs),
            "version": SUPPORTED_VERSION,
        },
        sort_keys=True,
    )


def write_envelope(path: str | os.PathLike[str], envelope: Envelope) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(envelope_json(envelope))


def _paths(value: object, field: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise RequestError(f"the envelope {where} has no list of paths in `{field}`")
    for path in value:
        if "\0" in path:
            raise RequestError(
                f"the envelope {where} names {path!r} in `{field}`: no file name holds a NUL"
            )
        if not path.isascii() and not _is_unicode(path):
            raise RequestError(
                f"the envelope {where} names {path!r} in `{field}`, which is not valid "
                "Unicode (a lone surrogate, from a \\u escape): a path must be text that "
                "UTF-8 can encode"
            )
    return tuple(value)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_envelope(path: str, cwd: str) -> Envelope:
    """Reads the envelope at ``path`` (relative to ``cwd``); a RequestError says what is wrong."""
    where = os.path.join(cwd, path)
    if "\0" in where:
        raise RequestError(f"the envelope's name {where!r} holds a NUL, which no file name can")
    try:
        with open(where, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise RequestError(f"cannot read the envelope {where}: {exc.strerror}") from None
    except ValueError as exc:  # not UTF-8
        raise RequestError(f"the envelope {where} is not valid JSON: {exc}") from None
    return parse_envelope(text, where)


def parse_envelope(text: str, where: str) -> Envelope:
    """The envelope in ``text`` (read from ``where``); a RequestError says what is wrong."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested too deep
        raise RequestError(f"the envelope {where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(f"the envelope {where} is not a JSON object")
    if data.get("version") != SUPPORTED_VERSION:
        raise RequestError(
            f"the envelope {where} has version {data.get('version')!r}; this worker-runtime "
            f"reads version {SUPPORTED_VERSION}: use the prelude that comes with it"
        )
    argfile = data.get("argfile")
    if not isinstance(argfile, str):
        raise RequestError(f"the envelope {where} has no `argfile` path")
    return Envelope(
        _paths([argfile], "argfile", where)[0],
        _paths(data.get("inputs"), "inputs", where),
        _paths(data.get("outputs"), "outputs", where),
    )
