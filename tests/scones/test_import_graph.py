"""The tree drawn from its imports: no circle anywhere, and none hidden in a function.

grimp (the graph import-linter builds its contracts on) reads every import, the ones inside
functions included, so a function-level import cannot hide a circle from this test.
"""
from __future__ import annotations

import grimp

PACKAGES = ("app", "infra", "pipelines", "workflow", "scones", "lambdas")


def import_cycles(graph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan, iteratively)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return cycles


def test_the_project_has_no_import_cycle():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = import_cycles(graph)
    assert cycles == [], "import circles (each a group of modules that import each other):\n" + \
        "\n".join(" <-> ".join(group) for group in cycles)


def test_the_cycle_finder_finds_a_cycle():
    """The finder itself, on a graph with one circle of three and a tail."""
    graph = grimp.ImportGraph()
    for importer, imported in (("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")):
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_nothing_in_the_local_twin_reaches_back_up_to_the_backend():
    """scones.backend imports scones.local; the twin builds what it needs itself
    (scones.local.resources), so the arrow never runs back up."""
    graph = grimp.build_graph("scones", cache_dir=None)
    back_up = sorted(m for m in graph.find_modules_that_directly_import("scones.backend")
                     if m.startswith("scones.local"))
    assert back_up == []
