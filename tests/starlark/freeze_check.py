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


def _free_reads(function: Function) -> set[str]:
    """Names a function reads that are neither its parameters nor assigned in it."""
    own = {a.arg for a in _parameters(function) if a is not None}
    body = function.body if isinstance(function, ast.FunctionDef) else [function.body]
    reads: set[str] = set()
    for statement in body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Name):
                if isinstance(node.ctx, ast.Store):
                    own.add(node.id)
                else:
                    reads.add(node.id)
    return reads - own


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
            for node in ast.walk(top):  # aliases: `actions = ctx.actions`, `c = ctx`
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target, value = node.targets[0], node.value
                    if isinstance(value, ast.Attribute) and value.attr == "actions":
                        value = value.value
                        kind = "AnalysisActions"
                    else:
                        kind = ""
                    if (
                        isinstance(target, ast.Name)
                        and isinstance(value, ast.Name)
                        and value.id in types
                    ):
                        types[target.id] = kind or types[value.id]
            if types:
                visit(top, types)
    return problems
