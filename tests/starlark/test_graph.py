"""prelude/utils/graph.bzl: the dependency order the Haskell rules compile modules in, and
what a module reaches through its imports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import starlark as sl

from workers_dev.buck2_fake import Buck2Fake


def call(tmp_path: Path, expression: str) -> Any:
    module = Buck2Fake().eval_file(
        tmp_path / "case.bzl",
        "root",
        'load("@prelude//utils:graph.bzl", "dependency_order", "reachable")\n'
        f"def run():\n    return {expression}\n",
    )
    return module.call("run")


DIAMOND = '{"app": ["left", "right"], "left": ["util", "base"], "right": ["base"], "util": ["base"], "base": []}'


def test_every_node_comes_after_the_nodes_it_points_to(tmp_path: Path) -> None:
    order = call(tmp_path, f'dependency_order({DIAMOND}, what = "g")')
    assert order == ["base", "util", "left", "right", "app"]


def test_the_order_depends_only_on_the_graph(tmp_path: Path) -> None:
    """Roots in sorted order, edges in their listed order: a dict built in another order
    gives the same result."""
    shuffled = '{"base": [], "util": ["base"], "right": ["base"], "app": ["left", "right"], "left": ["util", "base"]}'
    assert call(tmp_path, f'dependency_order({shuffled}, what = "g")') == call(
        tmp_path, f'dependency_order({DIAMOND}, what = "g")'
    )


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ('{"a": ["b"], "b": ["a"]}', "a -> b -> a"),
        ('{"a": ["a"]}', "a -> a"),
        ('{"a": ["b"], "b": ["c"], "c": ["b"]}', "b -> c -> b"),
    ],
)
def test_a_cycle_fails_naming_it(tmp_path: Path, graph: str, cycle: str) -> None:
    with pytest.raises(sl.StarlarkError, match=re.escape(f"core: the imports in a cycle: {cycle}")):
        call(tmp_path, f'dependency_order({graph}, what = "core: the imports")')


def test_an_edge_to_no_node_fails_naming_both(tmp_path: Path) -> None:
    with pytest.raises(sl.StarlarkError, match=re.escape('"a" points to "x", which is not a node')):
        call(tmp_path, 'dependency_order({"a": ["x"]}, what = "g")')


def test_reachable_follows_edges_from_the_start_only(tmp_path: Path) -> None:
    assert call(tmp_path, f'reachable({DIAMOND}, ["left"])') == ["util", "base"]
    assert call(tmp_path, f'reachable({DIAMOND}, ["base"])') == []
    assert sorted(call(tmp_path, f'reachable({DIAMOND}, ["app"])')) == [
        "base", "left", "right", "util",
    ]  # fmt: skip
