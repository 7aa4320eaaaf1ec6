"""Definitions Buck2 wants bound to a top-level name, checked statically for the fake.

Buck2 names a rule, a provider and a transitive set after the top-level variable it is
assigned to (``export_as``), and refuses to freeze a module holding one that never was:
"Transitive set type must be assigned to a top-level variable, e.g. `MySet =
transitive_set()`", "Provider type must be assigned to a variable" (seen under the real
Buck2 for ``SETS = [transitive_set()]`` and ``PROVIDERS = [provider(fields = [])]``).
starlark-pyo3 does not show the fake what a value was assigned to, so it reads the .bzl
source: at the top level of a file (outside ``def``), such a call must be the whole value
of a ``NAME = ...``. A call inside a function is not checked here: a factory called at
the top level (``MySet = make_set()``) is fine in Buck2, and the fake refuses
``transitive_set()`` during analysis at run time, as Buck2 does. Stricter than Buck2 only
for a value bound later under another name (``SETS = [transitive_set()]`` then
``MySet = SETS[0]``), which the prelude does not write.
"""

from __future__ import annotations

import ast

DEFINITIONS = ("rule", "provider", "transitive_set")


def unbound_definitions(source: str, filename: str) -> list[str]:
    """One message per top-level call of ``rule``/``provider``/``transitive_set`` that is not
    the value of a top-level ``NAME = ...``."""
    problems = []
    for statement in ast.parse(source, filename).body:
        if isinstance(statement, ast.FunctionDef):
            continue
        bound = None
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            bound = statement.value
        for node in ast.walk(statement):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in DEFINITIONS
                and node is not bound
            ):
                problems.append(
                    f"{filename}:{node.lineno}: `{node.func.id}()` must be assigned to a "
                    f"top-level variable, e.g. `MyThing = {node.func.id}(...)` (Buck2 names it "
                    "after that variable and refuses one that has none)"
                )
    return problems
