"""The fake's transitive sets, against Buck2's own (app/buck2_build_api/src/interpreter/
rule_defs/transitive_set/): the five orderings walk a set as Buck2's iterators do, a node is
one node however many sets share it, projections are computed when a set is made, and what
Buck2 refuses the fake refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import starlark as sl

from workers_dev.buck2_fake import Buck2Fake, UnfreezableCapture
from workers_dev.build_runner import PRELUDE_HASKELL, haskell_toolchain_dep

RULES = """
OrderInfo = provider(fields = {"orders": provider_field(typing.Any), "walked": provider_field(typing.Any, default = None)})

def _name(value):
    return value

def _count(value):
    return len(value)

def _nested(value):
    return [[value]]

def _joined(value):
    return ",".join(value)

Names = transitive_set(args_projections = {"name": _name})
Others = transitive_set(args_projections = {"name": _name})
Counts = transitive_set(args_projections = {"count": _count})
Nested = transitive_set(args_projections = {"nested": _nested})
Joined = transitive_set(args_projections = {"joined": _joined})

ORDERINGS = ["preorder", "postorder", "topological", "bfs", "dfs"]

def _graph_impl(ctx: AnalysisContext) -> list[Provider]:
    made = {}
    for entry in ctx.attrs.graph:
        made[entry[0]] = ctx.actions.tset(Names, value = entry[0], children = [made[c] for c in entry[1:]])
    root = made[ctx.attrs.graph[-1][0]]
    orders = {o: root.project_as_args("name", ordering = o) for o in ORDERINGS}
    walked = {o: list(root.traverse(ordering = o)) for o in ORDERINGS}
    return [DefaultInfo(), OrderInfo(orders = orders, walked = walked)]

graph = rule(impl = _graph_impl, attrs = {"graph": attrs.list(attrs.list(attrs.string()))})

def _case_impl(ctx: AnalysisContext) -> list[Provider]:
    CASE
    return [DefaultInfo(), OrderInfo(orders = {})]

case = rule(impl = _case_impl, attrs = {})
"""


def write_rules(tmp_path: Path, case: str = "pass") -> None:
    (tmp_path / "rules.bzl").write_text(RULES.replace("CASE", case))


def orders(tmp_path: Path, graph: list[list[str]]) -> dict[str, list[str]]:
    """Each ordering of the set whose nodes are made in ``graph``'s order, as
    ``[name, children...]``; the last one is the root."""
    write_rules(tmp_path)
    analysis = Buck2Fake().analyse(
        ":rules.bzl", "graph", "//t:graph", {"graph": json.dumps(graph)}, harness_dir=tmp_path
    )
    info = analysis.provider("OrderInfo")
    found = {ordering: projection["cmd_args"] for ordering, projection in info["orders"].items()}
    assert info["walked"] == found, "traverse() walks the set as its projections do"
    return found


def test_orderings_walk_a_shared_node_as_buck2_does(tmp_path: Path) -> None:
    """root -> [a, b], a -> [b, d]: Buck2's preorder marks a node seen when it is pushed,
    so d comes before b; dfs marks it when visited, left to right (traversal.rs)."""
    found = orders(tmp_path, [["b"], ["d"], ["a", "b", "d"], ["root", "a", "b"]])
    assert found == {
        "preorder": ["root", "a", "d", "b"],
        "dfs": ["root", "a", "b", "d"],
        "topological": ["root", "a", "b", "d"],
        "bfs": ["root", "a", "b", "d"],
        "postorder": ["b", "d", "a", "root"],
    }


def test_topological_puts_a_node_where_it_last_occurs(tmp_path: Path) -> None:
    """root -> [a, d], a -> [b, c], b -> [d]: d is needed by root and by b, so the
    topological order puts it after b; bfs takes it at root's level."""
    found = orders(tmp_path, [["d"], ["c"], ["b", "d"], ["a", "b", "c"], ["root", "a", "d"]])
    assert found == {
        "preorder": ["root", "a", "b", "c", "d"],
        "dfs": ["root", "a", "b", "d", "c"],
        "topological": ["root", "a", "b", "d", "c"],
        "bfs": ["root", "a", "d", "b", "c"],
        "postorder": ["d", "b", "c", "a", "root"],
    }


def test_nodes_are_told_apart_by_identity_not_value(tmp_path: Path) -> None:
    """Two nodes with one value are two nodes: both are walked."""
    found = orders(tmp_path, [["x"], ["y", "x"], ["x", "y"]])
    assert found["dfs"] == ["x", "y", "x"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            'ctx.actions.tset(Names, value = "a").project_as_args("nope")',
            "The requested projection `nope` does not exist. Valid projections: name",
        ),
        (
            'ctx.actions.tset(Names, value = "a").project_as_args("name", ordering = "inorder")',
            "Expected ordering to be one of `preorder`, `postorder`, `topological`, `bfs`, or `dfs`",
        ),
        (
            'ctx.actions.tset(Names, children = [ctx.actions.tset(Others, value = "a")])',
            "must be of the same transitive set type",
        ),
        ('ctx.actions.tset(Names, children = ["a"])', "must be transitive sets, got"),
        ("ctx.actions.tset(Names, children = None)", "`(iter)` not supported on type `NoneType`"),
        ('ctx.actions.tset("Names", value = "a")', "expected `TransitiveSetDefinition`"),
        # Projections run when the set is made, on any value given, None included; what
        # they return must be a command-line argument or a list of them (the messages are
        # the real Buck2's).
        ("ctx.actions.tset(Counts, value = [1, 2])", "but got `int (repr: 2)`"),
        ("ctx.actions.tset(Names, value = None)", "but got `NoneType (repr: None)`"),
        ('ctx.actions.tset(Nested, value = "a")', "but got `list"),
        (
            'ctx.actions.tset(Names, value = "a").traverse(ordering = "inorder")',
            "Expected ordering to be one of `preorder`",
        ),
    ],
)
def test_the_fake_refuses_what_buck2_refuses(tmp_path: Path, case: str, message: str) -> None:
    write_rules(tmp_path, case)
    with pytest.raises(sl.StarlarkError, match=re.escape(message)):
        Buck2Fake().analyse(":rules.bzl", "case", "//t:case", {}, harness_dir=tmp_path)


def test_projections_are_computed_when_the_set_is_made(tmp_path: Path) -> None:
    """Buck2 stores each node's projections when the set is made (TransitiveSet::new): a
    list changed later does not change what was projected from it."""
    write_rules(
        tmp_path,
        'value = ["a"]\n'
        "    made = ctx.actions.tset(Joined, value = value)\n"
        '    value.append("b")\n'
        '    return [DefaultInfo(), OrderInfo(orders = {"dfs": made.project_as_args("joined")})]',
    )
    analysis = Buck2Fake().analyse(":rules.bzl", "case", "//t:case", {}, harness_dir=tmp_path)
    assert analysis.provider("OrderInfo")["orders"]["dfs"]["cmd_args"] == ["a"]


def test_a_set_a_dependency_made_is_frozen(tmp_path: Path) -> None:
    """What a dependency's analysis left is frozen: its set's values cannot be changed."""
    fake = Buck2Fake()
    fake.dynamic_resolver = lambda paths: ["{}" for _ in paths]
    fake.analyse(
        "@prelude//haskell:haskell_library.bzl", "haskell_library", "//base:base",
        {"srcs": '["Base.hs"]'},
        {"toolchains//:haskell": haskell_toolchain_dep(["worker-runtime"])}, PRELUDE_HASKELL,
    )  # fmt: skip
    (tmp_path / "rules.bzl").write_text(
        'load("@prelude//:prelude.bzl", "HaskellLibraryInfo")\n'
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        "    node = ctx.attrs.dep[HaskellLibraryInfo].libraries.value\n"
        "    node.interfaces.append(node.archive)\n"
        "    return [DefaultInfo()]\n"
        'mutate = rule(impl = _impl, attrs = {"dep": attrs.dep()})\n'
    )
    with pytest.raises(sl.StarlarkError, match="Immutable"):
        fake.analyse(
            ":rules.bzl", "mutate", "//t:mutate", {"dep": '"//base:base"'},
            {"//base:base": fake.dep("//base:base")}, harness_dir=tmp_path,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # transitive_set_definition.rs: TransitiveSetOnlyInBzl.
        ("x = transitive_set()\n", "`transitive_set()` can only be used in `bzl` files"),
    ],
)
def test_transitive_set_only_in_a_bzl_file(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(sl.StarlarkError, match=re.escape(message)):
        Buck2Fake().eval_file(tmp_path / "BUCK", "root", source)


@pytest.mark.parametrize(
    "source",
    ["SETS = [transitive_set()]\n", "PROVIDERS = [provider(fields = [])]\n"],
)
def test_a_definition_must_be_bound_to_a_top_level_name(tmp_path: Path, source: str) -> None:
    """Buck2 names a set, a provider or a rule after the top-level variable it is assigned
    to and refuses one that has none ("Transitive set type must be assigned to a top-level
    variable")."""
    with pytest.raises(UnfreezableCapture, match="must be assigned to a top-level variable"):
        Buck2Fake().eval_file(tmp_path / "defs.bzl", "root", source)


def test_a_set_made_by_a_factory_at_the_top_level_is_fine(tmp_path: Path) -> None:
    """`Made = _make()` binds the set as Buck2 wants (seen under the real Buck2); making one
    during analysis is refused as Buck2 refuses it."""
    (tmp_path / "rules.bzl").write_text(
        "def _name(value):\n"
        "    return value\n"
        "def _make():\n"
        '    return transitive_set(args_projections = {"name": _name})\n'
        "Made = _make()\n"
        "def _impl(ctx: AnalysisContext) -> list[Provider]:\n"
        '    ctx.actions.tset(Made, value = "a")\n'
        "    return [DefaultInfo()]\n"
        "fine = rule(impl = _impl, attrs = {})\n"
        "def _late(ctx: AnalysisContext) -> list[Provider]:\n"
        '    ctx.actions.tset(_make(), value = "a")\n'
        "    return [DefaultInfo()]\n"
        "late = rule(impl = _late, attrs = {})\n"
    )
    fake = Buck2Fake()
    fake.analyse(":rules.bzl", "fine", "//t:fine", {}, harness_dir=tmp_path)
    with pytest.raises(sl.StarlarkError, match="unavailable during analysis"):
        fake.analyse(":rules.bzl", "late", "//t:late", {}, harness_dir=tmp_path)


def test_the_fake_says_what_it_does_not_implement(tmp_path: Path) -> None:
    with pytest.raises(sl.StarlarkError, match="implements args_projections only"):
        Buck2Fake().eval_file(
            tmp_path / "defs.bzl", "root", "S = transitive_set(reductions = {})\n"
        )
