"""Writes which modules of one Haskell target each of its modules imports, as JSON.

Usage: python3 scan_imports.py OUT.json MODULE=PATH...

The output maps every given module name to the sorted names of the given modules it
imports (imports of other targets' modules and of packages are left out). The scan reads
the import declarations as text: comments are skipped, `{-# SOURCE #-}`, `safe`,
`qualified` (before or after the name), package-qualified imports, indented imports and
explicit-brace layout (`where { import A; import B }`), an import on the header's line
(`module A where import B`) and a leading byte-order mark are understood.
Imports inside CPP conditionals all count, whichever branch is taken. A module whose
`module` header names another module than its path does is an error: the rules name its
interface after the path, and its dependents would not find it.
"""

from __future__ import annotations

import json
import re
import sys

IMPORT = re.compile(
    r"(?:^|[;{]|\bwhere)[ \t]*import\s+(?:\{-#\s*SOURCE\s*#-\}\s+)?(?:safe\s+)?(?:qualified\s+)?"
    r'(?:"[^"]*"\s+)?([A-Z][\w\']*(?:\.[A-Z][\w\']*)*)',
    re.MULTILINE,
)
#: A line comment's start (a run of dashes not part of an operator), and a character that
#: makes a following run of dashes part of one. Matched in place (``match(text, i)``): a
#: match on ``text[i:]`` copied the rest of the file at every character, so a generated
#: module of a few MB took minutes.
LINE_COMMENT = re.compile(r"--+(?![!#$%&*+./<=>?@\\^|~:])")
SYMBOL = re.compile(r"[!#$%&*+./<=>?@\\^|~:-]")
#: A module's header: the name it says it is (a source without one is `Main`).
HEADER = re.compile(r"(?:^|[;{])[ \t]*module\s+([A-Z][\w\']*(?:\.[A-Z][\w\']*)*)", re.MULTILINE)


def strip_comments(text: str) -> str:
    """Removes nested {- -} block comments (pragmas included) and -- line comments."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith("{-", i):
            if text.startswith("{-# SOURCE", i) and depth == 0:
                end = text.find("#-}", i)
                if end != -1:
                    out.append(text[i : end + 3])
                    i = end + 3
                    continue
            depth += 1
            i += 2
        elif depth and text.startswith("-}", i):
            depth -= 1
            i += 2
        elif depth:
            out.append("\n" if text[i] == "\n" else "")
            i += 1
        elif LINE_COMMENT.match(text, i) and (i == 0 or not SYMBOL.match(text, i - 1)):
            end = text.find("\n", i)
            i = len(text) if end == -1 else end
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print("usage: scan_imports.py OUT.json MODULE=PATH...", file=sys.stderr)
        return 2
    modules = dict(a.split("=", 1) for a in argv[1:])
    graph = {}
    for name, path in modules.items():
        try:
            with open(path, encoding="utf-8-sig") as handle:  # a BOM is not text
                text = strip_comments(handle.read())
        except OSError as exc:
            print(
                f"scan-imports: cannot read {path} (module {name}): {exc.strerror}", file=sys.stderr
            )
            return 1
        header = HEADER.search(text)
        if header and header.group(1) != name:
            print(
                f"scan-imports: {path} says `module {header.group(1)}`, but its path in the "
                f"package makes it {name}, the name the rules compile it under and its "
                "dependents look for: move the file (or the BUCK file) so that the two match",
                file=sys.stderr,
            )
            return 1
        graph[name] = sorted({m for m in IMPORT.findall(text) if m in modules and m != name})
    with open(argv[0], "w", encoding="utf-8") as handle:
        json.dump(graph, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
