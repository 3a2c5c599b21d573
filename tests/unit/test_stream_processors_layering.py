"""The worker's modules import one way: no cycle in ``stream_processors`` (type-only imports included), and only the
Faust adapter imports Faust."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "stream_processors"


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            for module in modules:
                deps.add(module)
        graph[name] = deps
    return graph


def test_no_module_of_the_worker_imports_one_that_imports_it_back() -> None:
    graph = {
        name: {d.removeprefix("stream_processors.") for d in deps if d.startswith("stream_processors.")}
        for name, deps in _imports().items()
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, f"import cycle: {' -> '.join([*visiting[visiting.index(name) :], name])}"
        if name in done:
            return
        visiting.append(name)
        for dep in graph.get(name, ()):
            visit(dep)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_only_the_adapter_imports_faust() -> None:
    users = sorted(n for n, deps in _imports().items() if any(d == "faust" or d.startswith("faust.") for d in deps))
    assert users == ["faust_adapter"]
