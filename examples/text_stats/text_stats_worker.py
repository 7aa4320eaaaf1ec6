#!/usr/bin/env python3
"""An example Bazel-protocol worker: summarises text files into a JSON report.

It is the demo's backend: a small "compiler" whose cold start (an interpreter, its
imports, a compiled regex table) costs far more than its work, like real compilers.

- ``text_stats_worker.py @argfile``: one-shot, the fallback Buck2 runs when workers are
  off; the argfile holds ``--out REPORT SRC...``; exits 0, or 1 with a message.
- ``text_stats_worker.py --persistent_worker``: reads JSON WorkRequests from stdin and
  writes JSON WorkResponses to stdout (Bazel's JSON worker protocol), one at a time.

Standard library only, so that it runs wherever Python does.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import sys
from typing import Any

WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_']*")


def summarise(arguments: list[str]) -> tuple[int, str]:
    """Runs one request; returns (exit code, diagnostics)."""
    if len(arguments) < 3 or arguments[0] != "--out":
        return 1, "usage: --out REPORT SRC...\n"
    out, sources = arguments[1], arguments[2:]
    report: dict[str, Any] = {"files": []}
    words: collections.Counter[str] = collections.Counter()
    for source in sources:
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            return 1, f"{source}: error: {exc.strerror}\n"
        found = WORD.findall(text)
        words.update(w.lower() for w in found)
        report["files"].append(
            {
                "path": source,
                "lines": text.count("\n"),
                "words": len(found),
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
            }
        )
    report["top_words"] = words.most_common(5)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1, sort_keys=True)
    os.replace(tmp, out)
    return 0, ""


def read_requests(stream: Any) -> Any:
    """Yields JSON objects from a stream of concatenated objects (newlines optional)."""
    decoder = json.JSONDecoder()
    buffer = ""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            return
        buffer += chunk.decode("utf-8")
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                obj, end = decoder.raw_decode(buffer)
            except json.JSONDecodeError:
                break
            buffer = buffer[end:]
            yield obj


def persistent_worker() -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but responses may reach the real stdout
    for request in read_requests(sys.stdin.buffer):
        try:
            code, output = summarise(list(request.get("arguments", [])))
        except Exception as exc:  # a bad request must never take the worker down
            code, output = 1, f"text_stats: internal error: {exc!r}\n"
        response: dict[str, Any] = {"exitCode": code, "output": output}
        if request.get("requestId"):
            response["requestId"] = request["requestId"]
        out.write(json.dumps(response))
        out.flush()
    return 0


class ArgfileError(Exception):
    """An argument file that cannot be expanded; the message names it."""


def is_label(arg: str) -> bool:
    """A label of another repository (``@repo//pkg:target``), which Bazel passes through."""
    return "//" in arg and not any(c in arg for c in "\n\r\x85\u2028\u2029")


def expand(arguments: list[str], chain: tuple[str, ...] = ()) -> list[str]:
    """@argfiles expanded as the runtime expands them for the warm path (docs/argfiles.md):
    one argument per line verbatim (LF, CRLF or CR ends a line), recursively; @@x, a bare @,
    @repo//labels and --flagfile= pass through."""
    result: list[str] = []
    for arg in arguments:
        if len(arg) < 2 or arg[0] != "@" or arg[1] == "@" or is_label(arg):
            result.append(arg)
            continue
        name = arg[1:]
        real = os.path.realpath(name)
        if real in chain:
            raise ArgfileError(f"argument file {name!r} includes itself")
        if len(chain) >= 16:
            raise ArgfileError(f"argument file {name!r} nests more than 16 argument files")
        try:
            with open(name, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise ArgfileError(f"argument file {name!r} does not exist") from None
        except OSError as exc:
            raise ArgfileError(f"argument file {name!r} cannot be read: {exc.strerror}") from None
        if b"\0" in data:
            raise ArgfileError(f"argument file {name!r} contains a NUL byte")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ArgfileError(f"argument file {name!r} is not valid UTF-8") from None
        lines = re.split(r"\r\n|\r|\n", text) if text else []
        if lines and lines[-1] == "":
            lines.pop()
        result.extend(expand(lines, (*chain, real)))
    return result


def main(argv: list[str]) -> int:
    if "--persistent_worker" in argv:
        return persistent_worker()
    try:
        arguments = expand(argv)
    except ArgfileError as exc:
        sys.stderr.write(f"text_stats: {exc}\n")
        return 125
    code, output = summarise(arguments)
    sys.stderr.write(output)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
