"""Provider types in annotations, which Buck2 refuses across cells, checked for the fake.

Buck2 evaluates a .bzl file outside its prelude cell once per cell whose BUCK files load
it. A provider declared in such a file is then a different type in each evaluation (the
same provider id, so ``dep[Info]`` finds it, but another type), and an annotation
``toolchain: JavaToolchainInfo`` refuses the other cell's value: "Value ... of type
`Provider` does not match the type annotation `JavaToolchainInfo`". That happens as soon
as the rules are mounted beside Buck2's bundled prelude. The fake evaluates every file once,
so it checks the source instead: no parameter or return annotation may name a provider
declared with ``provider()`` in the repository's cells.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

_PROVIDER = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*) = provider\(", re.MULTILINE)


def provider_names(files: Iterable[Path]) -> set[str]:
    """The names bound to ``provider(...)`` at the top level of these .bzl files."""
    return {name for path in files for name in _PROVIDER.findall(path.read_text())}


def provider_annotations(source: str, filename: str, providers: set[str]) -> list[str]:
    """One message per annotation in ``source`` that names one of ``providers``."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.FunctionDef):
            continue
        args = node.args
        annotated = [
            (a.arg, a.annotation)
            for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]
            if a.annotation is not None
        ]
        if node.returns is not None:
            annotated.append(("return value", node.returns))
        for what, annotation in annotated:
            for name in ast.walk(annotation):
                if isinstance(name, ast.Name) and name.id in providers:
                    problems.append(
                        f"{filename}:{node.lineno}: `{node.name}` types its {what} as "
                        f"`{name.id}`, a provider: Buck2 refuses a value of that provider "
                        "made in another cell's evaluation of the file (annotate typing.Any)"
                    )
    return problems
