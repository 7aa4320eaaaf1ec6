"""Expansion of ``@argfile`` arguments the way Bazel does before it builds a WorkRequest.

An argument ``@path`` is replaced by the lines of that file, one argument per line,
recursively. ``@@...`` and ``--flagfile=``/``-flagfile=`` arguments are passed through
unchanged, as Bazel does.
"""

from __future__ import annotations

import os
import re

from worker_runtime.errors import RequestError

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

#: Deeper nesting than this is taken for a cycle.
MAX_DEPTH = 16


def is_argfile(arg: str) -> bool:
    """True for an argument Bazel expands: ``@path``, but not ``@@...`` nor a bare ``@``."""
    return len(arg) > 1 and arg[0] == "@" and arg[1] != "@"


def expand_argfiles(args: list[str], cwd: str) -> list[str]:
    """Returns ``args`` with every ``@path`` replaced by the file's lines (paths relative to cwd)."""
    if not any(is_argfile(a) for a in args):
        return args
    out: list[str] = []
    _expand_into(out, args, cwd, ())
    return out


def _expand_into(out: list[str], args: list[str], cwd: str, chain: tuple[str, ...]) -> None:
    for arg in args:
        if not is_argfile(arg):
            out.append(arg)
            continue
        path = os.path.join(cwd, arg[1:])
        real = os.path.realpath(path)
        if real in chain or len(chain) >= MAX_DEPTH:
            raise RequestError(
                f"argument file {arg[1:]!r} includes itself (through {' -> '.join(chain)}); "
                "remove the cycle from the argument files"
            )
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise RequestError(
                f"argument file {arg[1:]!r} does not exist (looked in {cwd}); "
                "the action must declare it as an input so that it exists when the request runs"
            ) from None
        except OSError as exc:
            raise RequestError(
                f"argument file {arg[1:]!r} cannot be read: {exc.strerror}"
            ) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(
                f"argument file {arg[1:]!r} is not valid UTF-8 (byte {exc.start}: "
                f"{data[exc.start : exc.start + 8]!r}); Bazel-protocol backends take text arguments"
            ) from None
        # Only CR, LF and CRLF end a line (str.splitlines would also split on U+2028 and
        # other separators that Bazel keeps inside an argument).
        lines = _LINE_BREAK.split(text)
        if lines and lines[-1] == "":
            lines.pop()
        _expand_into(out, lines, cwd, (*chain, real))
