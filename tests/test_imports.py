"""The package's import graph has no cycle: every import counts, those inside functions too (a cycle deferred into
a function is still two modules that cannot be read, or moved, one without the other)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "torch_imdb"


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from a import b`` counts as a.b when b is a module)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE.name:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    graph[name].add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
        graph[name] &= set(modules)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per cycle found by a depth-first walk."""
    found, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                walk(nxt, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    return found


def test_the_walk_finds_a_cycle_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()})
    assert not cycles({"a": {"b"}, "b": {"c"}, "c": set()})


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "torch_imdb.explain.stack" in graph["torch_imdb.explain.twin"]  # the walk sees the imports
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


# the floors below the explainers: the data, the models and their training know nothing of explanation
BELOW_EXPLAIN = ("cells", "config", "data", "io", "errors", "machine", "progress", "keras_dropout", "model",
                 "architectures", "checkpoint", "training", "train")


def test_the_models_and_their_training_import_nothing_of_the_explainers():
    graph = import_graph()
    upward = {f"{name} -> {target}" for name in BELOW_EXPLAIN for target in graph[f"torch_imdb.{name}"]
              if target.startswith("torch_imdb.explain")}
    assert not upward, "imports from a floor above: " + ", ".join(sorted(upward))


# the explain library (the engines, the transform, the drop-ins) below its applications: the commands, the corpus
# runners and readers, and the shared command-line helpers
LIBRARY = ("api", "backends", "cells", "dropins", "engines", "fast", "head", "inputs", "lrp", "marks", "onednn", "own",
           "rules", "shapley", "stack", "transform", "twin")
APPLICATIONS = ("torch_imdb.cli", "torch_imdb.train", "torch_imdb.words", "torch_imdb.report", "torch_imdb.series",
                "torch_imdb.report_check", "torch_imdb.explain.__main__", "torch_imdb.explain.compare",
                "torch_imdb.explain.corpus", "torch_imdb.explain.ray_corpus", "torch_imdb.explain.texts")


def test_the_explain_library_imports_nothing_of_its_applications():
    graph = import_graph()
    assert set(LIBRARY) <= {name.rsplit(".", 1)[-1] for name in graph if name.startswith("torch_imdb.explain.")}
    upward = {f"explain.{name} -> {target}" for name in LIBRARY for target in graph[f"torch_imdb.explain.{name}"]
              if target in APPLICATIONS}
    assert not upward, "imports from a floor above: " + ", ".join(sorted(upward))
