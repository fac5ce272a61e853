"""The evaluation package stands on its own: nothing in softmcl_jax/evaluation/ imports the CLI
``softmcl_jax.evaluate``, directly or through another module, and the package has no import
cycle. Imports are read from the source with ``ast`` (function-level imports included), so the
check needs nothing installed and runs no module."""

from __future__ import annotations

import ast
import os

import softmcl_jax

PACKAGE = os.path.dirname(softmcl_jax.__file__)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return rel.removesuffix(".__init__")


def _imports(path: str, name: str) -> set[str]:
    """Every softmcl_jax module that ``path`` imports, anywhere in the file."""
    out = set()
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .a import b
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in out if m.split(".")[0] == "softmcl_jax"}


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports} for every module of softmcl_jax."""
    files = {}
    for root, _, names in os.walk(PACKAGE):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(root, n)
                files[_module_name(path)] = path
    # A module's own ancestor packages are initialised before it whatever it imports (`from
    # softmcl_jax.evaluation import probes` in evaluation/tasks.py); that edge is no cycle.
    return {m: {i for i in _imports(p, m) & set(files) if not m.startswith(i + ".")}
            for m, p in files.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_reader_sees_real_imports():
    graph = import_graph()
    assert "softmcl_jax.evaluation.embed" in graph["softmcl_jax.evaluation.tasks"]
    assert "softmcl_jax.evaluation.suite" in graph["softmcl_jax.evaluate"]
    assert "softmcl_jax.evaluation.probe" in graph["softmcl_jax.loop"]


def test_no_evaluation_module_imports_the_cli():
    graph = import_graph()
    evaluation = [m for m in graph if m.startswith("softmcl_jax.evaluation")]
    assert len(evaluation) >= 8
    for module in evaluation:
        assert "softmcl_jax.evaluate" not in graph[module], module
        assert "softmcl_jax.evaluate" not in _reachable(graph, module), module


def test_evaluation_and_export_have_no_import_cycle():
    graph = import_graph()
    for module in graph:
        if module.startswith(("softmcl_jax.evaluat", "softmcl_jax.export", "softmcl_jax.loop",
                              "softmcl_jax.model_card")):
            assert module not in _reachable(graph, module), module
