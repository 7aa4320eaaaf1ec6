"""Graph helpers: a dependency order with the cycle named, and what a node reaches.

A graph is a dict from each node to the nodes it points to (its dependencies), in a
meaningful order. Starlark has neither recursion nor `while`, so both walks keep an
explicit stack and loop a bounded number of times: every node is pushed once and every
edge followed once, so `len(graph)` plus the number of edges, plus one, always suffices.
"""

def _steps(graph: dict[typing.Any, list[typing.Any]]) -> int:
    steps = len(graph) + 1
    for edges in graph.values():
        steps += len(edges)
    return steps

def _check_edges(graph: dict[typing.Any, list[typing.Any]]) -> None:
    for node, edges in graph.items():
        for edge in edges:
            if edge not in graph:
                fail("dependency_order: " + repr(node) + " points to " + repr(edge) + ", which is not a node of the graph")

def dependency_order(graph: dict[typing.Any, list[typing.Any]], *, what: str) -> list[typing.Any]:
    """Every node of `graph`, each after all the nodes it points to.

    Depth first, from the nodes in sorted order and along the edges in their listed order,
    so the result depends only on the graph.

    Args:
      graph: each node and the nodes it points to; every one of those must be a node too.
      what: what the edges are, for the error a cycle fails with:
        "<what> in a cycle: A -> B -> A".

    Returns:
      A new list of every node.
    """
    _check_edges(graph)
    order = []
    state = {}  # node -> "open" while on the current path, "done" once in `order`
    for root in sorted(graph):
        if root in state:
            continue
        state[root] = "open"
        path = [root]
        stack = [(root, 0)]  # (node, index of the next edge to follow)
        for _ in range(_steps(graph)):
            if not stack:
                break
            node, index = stack[-1]
            edges = graph[node]
            if index == len(edges):
                stack.pop()
                path.pop()
                state[node] = "done"
                order.append(node)
                continue
            stack[-1] = (node, index + 1)
            edge = edges[index]
            if state.get(edge) == "open":
                cycle = path[path.index(edge):] + [edge]
                fail(what + " in a cycle: " + " -> ".join([str(n) for n in cycle]))
            if edge not in state:
                state[edge] = "open"
                path.append(edge)
                stack.append((edge, 0))
        if stack:
            fail("dependency_order: the walk did not finish (a bug in prelude/utils/graph.bzl)")
    return order

def reachable(graph: dict[typing.Any, list[typing.Any]], start: list[typing.Any]) -> list[typing.Any]:
    """The nodes reached from `start` along one or more edges, in the order first met.

    Args:
      graph: each node and the nodes it points to.
      start: the nodes to walk from; they are in the result only if an edge reaches them.

    Returns:
      A new list without repeats.
    """
    seen = {}
    order = []
    todo = [edge for node in start for edge in reversed(graph[node])]
    for _ in range(_steps(graph) + len(todo)):
        if not todo:
            break
        node = todo.pop()
        if node in seen:
            continue
        seen[node] = True
        order.append(node)
        todo.extend(reversed(graph[node]))
    return order
