"""``@argfile`` expansion: the project's one rule (docs/argfiles.md), Python side.

Used by the runtime's front on every Buck2 request and by the remote executor on the
request arguments of a persistent-worker action. The Java worker (``Argfiles.java``), the
GHC worker (``Argfiles.hs``) and ``toolchains/haskell/ghc-argfile`` implement the same
rule; tests/vectors/argfiles.json holds the cases all of them must agree on.

In short: ``@path`` (not ``@@...``, not a bare ``@``, not a label ``@repo//pkg:target``)
is replaced by the file's lines, one argument per line verbatim, recursively;
``--flagfile=``/``-flagfile=`` pass through.
"""

from __future__ import annotations

import os
import re
from typing import NoReturn

from worker_runtime.errors import RequestError

#: LF, CRLF and a lone CR end a line (as Bazel's reader has it). Nothing else does:
#: str.splitlines would also split on U+2028, form feeds and the like.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

#: At most this many argument files nested in one another (the outermost counts).
MAX_DEPTH = 16
#: What one expansion may read: argument files are read again at each mention, so a few
#: small files that each name the next ten times expand to billions of arguments. Each
#: file read counts its bytes and ``LINE_COST`` more per line (the memory an argument
#: takes beyond its text); the executor expands what any client sends.
MAX_EXPANSION_BYTES = 256 << 20
LINE_COST = 64
MAX_ARGFILE_READS = 10_000


def expansion_cost(data: bytes | bytearray | str) -> int:
    """What an argument file counts against MAX_EXPANSION_BYTES: its bytes, and LINE_COST
    per line break (a CRLF counted twice: a bound, never less), known before its lines
    are split out. Given as text, it must be ASCII (a character a byte)."""
    if isinstance(data, str):
        return len(data) + LINE_COST * (data.count("\n") + data.count("\r"))
    return len(data) + LINE_COST * (data.count(b"\n") + data.count(b"\r"))


#: What Java's regex ``.`` does not match, and so what Bazel's label test fails on.
_JAVA_LINE_BREAKS = frozenset("\n\r\x85\u2028\u2029")


def is_argfile(arg: str) -> bool:
    """True for an argument that is expanded: ``@path``, but not ``@@...``, a bare ``@``
    nor a label of another repository."""
    return len(arg) > 1 and arg[0] == "@" and arg[1] != "@" and not is_repository_label(arg)


def is_repository_label(arg: str) -> bool:
    """Whether an ``@`` argument is a label (``@maven//:guava``), which Bazel passes to a
    worker as it is: its test is Java's regex ``^@.*//.*``, whose ``.`` matches no line
    break."""
    return "//" in arg and _JAVA_LINE_BREAKS.isdisjoint(arg)


def expand_argfiles(args: list[str], cwd: str, *, confined: bool = False) -> list[str]:
    """Returns ``args`` with every ``@path`` replaced by the file's lines (paths relative to
    ``cwd``, nested ones too). ``args`` itself when there is nothing to expand.

    ``confined``: every argument file must be a relative path that stays under ``cwd``
    (the remote executor, which reads them from an action's input root).
    Raises RequestError naming the argument file that is missing, unreadable, not UTF-8,
    holds a NUL byte, includes itself or nests too deep.
    """
    if not any(is_argfile(a) for a in args):
        return args
    out: list[str] = []
    root = os.path.realpath(cwd) if confined else None
    _expand_into(out, args, cwd, root, (), _Budget())
    return out


class _Budget:
    """What is left of one expansion's MAX_EXPANSION_BYTES and MAX_ARGFILE_READS."""

    def __init__(self) -> None:
        self.bytes = MAX_EXPANSION_BYTES
        self.reads = MAX_ARGFILE_READS

    def take_read(self, name: str) -> None:
        self.reads -= 1
        if self.reads < 0:
            raise RequestError(
                f"the argument files are read more than {MAX_ARGFILE_READS:,} times (at "
                f"{name!r}): each mention of one reads it again; name each file once"
            )

    def take(self, name: str, data: bytes) -> None:
        self.bytes -= expansion_cost(data)
        if self.bytes < 0:
            self.past_limit(name)

    @staticmethod
    def past_limit(name: str) -> NoReturn:
        raise RequestError(
            f"the argument files expand to more than {MAX_EXPANSION_BYTES >> 20} MiB of "
            f"arguments (at {name!r}; each mention of a file reads it again); pass fewer "
            "or smaller argument files"
        )


def split_lines(text: str) -> list[str]:
    """An argument file's text as its arguments: one per line, verbatim, the last line's
    line break optional, empty lines kept as empty arguments."""
    if not text:
        return []
    lines = _LINE_BREAK.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def _expand_into(
    out: list[str],
    args: list[str],
    cwd: str,
    root: str | None,
    chain: tuple[str, ...],
    budget: _Budget,
) -> None:
    for arg in args:
        if not is_argfile(arg):
            out.append(arg)
            continue
        name = arg[1:]
        if "\0" in name:
            raise RequestError(
                f"argument file {name!r} cannot exist: no file name holds a NUL; check the "
                "argument that names it"
            )
        path = os.path.join(cwd, name)
        real = os.path.realpath(path)
        if root is not None and (
            os.path.isabs(name)
            or ".." in name.split("/")
            or not (real == root or real.startswith(root + os.sep))
        ):
            raise RequestError(
                f"argument file {name!r} is outside the action's directory; "
                "argument files must be relative paths under it"
            )
        if real in chain:
            raise RequestError(
                f"argument file {name!r} includes itself (through {' -> '.join(chain)}); "
                "remove the cycle from the argument files"
            )
        if len(chain) >= MAX_DEPTH:
            raise RequestError(
                f"argument file {name!r} nests more than {MAX_DEPTH} argument files "
                f"(through {' -> '.join(chain)})"
            )
        budget.take_read(name)
        text = _read(name, path, cwd, budget)
        _expand_into(out, split_lines(text), cwd, root, (*chain, real), budget)


def _read(name: str, path: str, cwd: str, budget: _Budget) -> str:
    max_bytes = budget.bytes
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)  # bounded: `@/dev/zero` too
    except FileNotFoundError:
        raise RequestError(
            f"argument file {name!r} does not exist (looked in {cwd}); "
            "the action must declare it as an input so that it exists when the request runs"
        ) from None
    except OSError as exc:
        raise RequestError(f"argument file {name!r} cannot be read: {exc.strerror}") from None
    budget.take(name, data)  # before its lines are split out
    return argfile_text(name, data)


def argfile_text(name: str, data: bytes | bytearray) -> str:
    """Argument file ``name``'s bytes as text; RequestError if they hold a NUL byte or are
    not UTF-8."""
    if b"\0" in data:
        raise RequestError(
            f"argument file {name!r} contains a NUL byte (byte {data.index(0)}); "
            "no argument can hold one"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            f"argument file {name!r} is not valid UTF-8 (byte {exc.start}: "
            f"{data[exc.start : exc.start + 8]!r}); arguments are text"
        ) from None
