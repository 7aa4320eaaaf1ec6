"""What Buck2 refuses when it freezes analysis results, checked statically for the fake.

Buck2 freezes every value that analysis leaves behind, a ``dynamic_output`` callback
included, and freezing a function freezes what it captured. The rule's ``ctx``
(``AnalysisContext``) and ``ctx.actions`` (``AnalysisActions``) are allocated unfreezable,
so a nested function that captures either fails with "Value of type `AnalysisContext`
cannot be frozen" (app/buck2_build_api/src/interpreter/rule_defs/context.rs). starlark-pyo3
cannot show what a closure captured, so the fake reads the .bzl source instead: a nested
``def`` or ``lambda`` must not read a parameter of an enclosing function typed
``AnalysisContext`` or ``AnalysisActions`` (or named ``ctx`` without a type). That is
stricter than Buck2 only for a nested function that never escapes, which the prelude
does not write either.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

UNFREEZABLE = ("AnalysisContext", "AnalysisActions")

Function = ast.FunctionDef | ast.Lambda


def _parameters(function: Function) -> list[ast.arg]:
    args = function.args
    return [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]  # type: ignore[list-item]


def _unfreezable_type(parameter: ast.arg) -> str | None:
    """The unfreezable type of a parameter: by its annotation, or ``ctx`` unannotated."""
    annotation = parameter.annotation
    if isinstance(annotation, ast.Name) and annotation.id in UNFREEZABLE:
        return annotation.id
    if annotation is None and parameter.arg == "ctx":
        return "AnalysisContext"
    return None


def _in_source_order(node: ast.AST) -> Iterator[ast.AST]:
    """``node`` and everything below it, depth first in source order (``ast.walk`` is
    breadth first, which would see ``b = a`` before an earlier, deeper ``a = ctx``)."""
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _in_source_order(child)


def _free_reads(function: Function) -> set[str]:
    """Names a function holds on to from outside: read in its body but neither its own
    parameters nor assigned in it (nor parameters of functions nested in it), and every
    name read in its default values, which it stores."""
    own = {a.arg for a in _parameters(function) if a is not None}
    body = function.body if isinstance(function, ast.FunctionDef) else [function.body]
    reads: set[str] = set()
    for statement in body:
        for node in ast.walk(statement):
            if isinstance(node, ast.FunctionDef | ast.Lambda):
                own |= {a.arg for a in _parameters(node) if a is not None}
            elif isinstance(node, ast.Name):
                if isinstance(node.ctx, ast.Store):
                    own.add(node.id)
                else:
                    reads.add(node.id)
    defaults = [d for d in (*function.args.defaults, *function.args.kw_defaults) if d is not None]
    stored = {n.id for d in defaults for n in ast.walk(d) if isinstance(n, ast.Name)}
    return (reads - own) | stored


def _aliases(top: ast.FunctionDef, types: dict[str, str]) -> None:
    """Adds to ``types`` the local names bound to an unfreezable value, in source order:
    ``actions = ctx.actions``, ``c = ctx``, ``a, n = ctx.actions, 1``."""
    for node in _in_source_order(top):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        pairs = [(target, value)]
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            pairs = list(zip(target.elts, value.elts, strict=False))
        for name, bound in pairs:
            kind = ""
            if isinstance(bound, ast.Attribute) and bound.attr == "actions":
                bound, kind = bound.value, "AnalysisActions"
            if isinstance(name, ast.Name) and isinstance(bound, ast.Name) and bound.id in types:
                types[name.id] = kind or types[bound.id]


def unfreezable_captures(source: str, filename: str) -> list[str]:
    """One message per nested function that captures an unfreezable value."""
    problems: list[str] = []

    def visit(function: Function, unfreezable: dict[str, str]) -> None:
        for node in ast.walk(function):
            if node is function or not isinstance(node, ast.FunctionDef | ast.Lambda):
                continue
            captured = sorted(_free_reads(node) & set(unfreezable))
            name = node.name if isinstance(node, ast.FunctionDef) else "lambda"
            for variable in captured:
                problems.append(
                    f"{filename}:{node.lineno}: `{name}` captures `{variable}`: Value of type "
                    f"`{unfreezable[variable]}` cannot be frozen (Buck2 freezes what analysis "
                    "leaves behind; capture plain values such as ctx.label.name instead)"
                )

    for top in ast.parse(source, filename).body:
        if isinstance(top, ast.FunctionDef):
            types = {}
            for parameter in _parameters(top):
                kind = _unfreezable_type(parameter) if parameter is not None else None
                if kind is not None:
                    types[parameter.arg] = kind
            _aliases(top, types)
            if types:
                visit(top, types)
    return problems
