"""The package's layering: no import cycle among its modules (lazy imports inside functions
count), and each layer imports only what it may — compiler/ neither triton, sqlglot, duckdb,
runtime nor krypton_ql; runtime/ not krypton_ql; sqlglot only in krypton_ql/dsl/."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compiler", "runtime", "krypton_ql")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports (a name imported from a package counts as its submodule
    when there is one; importing a package's ``__init__`` is not an edge)."""
    names: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _graph() -> tuple[nx.DiGraph, dict[str, set[str]]]:
    modules = _modules()
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}
    graph, external = nx.DiGraph(), {}
    for name, path in modules.items():
        graph.add_node(name)
        imported = _imports(path, name, modules)
        external[name] = {i.split(".")[0] for i in imported}
        for target in imported:
            if target in modules and target not in packages and target != name:
                graph.add_edge(name, target)
    return graph, external


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("compiler", {"triton", "sqlglot", "duckdb", "runtime", "krypton_ql"}),
        ("runtime", {"krypton_ql", "sqlglot"}),
        ("krypton_ql", {"sqlglot"}),
    ],
)
def test_layers_import_only_what_they_may(layer: str, forbidden: set[str]) -> None:
    _, external = _graph()
    offenders = {
        module: sorted(external[module] & forbidden)
        for module in external
        if module.split(".")[0] == layer
        and not module.startswith("krypton_ql.dsl")
        and external[module] & forbidden
    }
    assert not offenders, offenders
