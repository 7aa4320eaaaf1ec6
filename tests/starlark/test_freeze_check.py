"""The fake's static check for what Buck2 cannot freeze: closures holding ctx or ctx.actions."""

from __future__ import annotations

import pytest

from workers_dev.freeze_check import unfreezable_captures

HEAD = "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"


@pytest.mark.parametrize(
    ("body", "captured"),
    [
        ("    def f(d, a, o):\n        return ctx.label\n", "ctx"),
        (
            "    actions = ctx.actions\n    def f(d, a, o):\n        actions.write('x', '')\n",
            "actions",
        ),
        # A default value is stored in the function, so it is frozen with it.
        ("    def f(d, a, o, acts = ctx.actions):\n        return acts\n", "ctx"),
        # An alias made in a nested block, before the alias of the alias.
        ("    if True:\n        a = ctx\n    b = a\n    def f(d, x, o):\n        return b\n", "b"),
        ("    acts, n = ctx.actions, 1\n    def f(d, a, o):\n        return acts\n", "acts"),
        ("    g = lambda: ctx.attrs\n", "ctx"),
    ],
)
def test_a_closure_holding_ctx_is_found(body: str, captured: str) -> None:
    (problem,) = unfreezable_captures(HEAD + body, "rules.bzl")
    assert f"captures `{captured}`" in problem and "cannot be frozen" in problem


@pytest.mark.parametrize(
    "body",
    [
        "    name = ctx.label.name\n    def f(d, a, o):\n        return name\n",
        # The callback's own ctx and a lambda's own parameter are not captures.
        "    def f(ctx, a, o):\n        return ctx.actions\n",
        "    def f(d, a, o):\n        return [lambda ctx: ctx.name]\n",
    ],
)
def test_plain_values_and_own_parameters_are_fine(body: str) -> None:
    assert unfreezable_captures(HEAD + body, "rules.bzl") == []
