"""The package's layering, counted honestly: every import is an edge — at the top of a module,
inside a function, under ``TYPE_CHECKING``, and into a package's ``__init__`` — and the graph of
``compiler``, ``runtime`` and ``krypton_ql`` has no cycle. Layers import only downwards
(compiler ← runtime ← krypton_ql, and inside krypton_ql the order of ``LAYERS``); only the
pipeline imports rewrite rules; only the query language imports sqlglot; no library module reads
the environment."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compiler", "runtime", "krypton_ql")

# krypton_ql's parts, lowest first: a module imports only from its own part or lower ones.
# A part is a module or package name under krypton_ql ("*" is krypton_ql/__init__ itself).
LAYERS = (
    ("errors", "progress", "fingerprint", "photos", "volumes", "segments"),
    ("models",),
    ("quality",),
    ("options",),
    ("render",),
    ("plans",),
    ("integrations",),
    ("dsl",),
    ("api",),
    ("*", "captum", "monai"),  # the public names and the drop-ins' documented import paths
    ("apps",),
)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every module ``path`` imports, anywhere in it: ``from package import submodule`` counts
    as the submodule, ``from package import name`` as the package (its ``__init__``)."""
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
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.add(submodule if submodule in modules else base)
    return names


def _graph() -> tuple[nx.DiGraph, dict[str, set[str]]]:
    modules = _modules()
    graph, external = nx.DiGraph(), {}
    for name, path in modules.items():
        graph.add_node(name)
        imported = _imports(path, name, set(modules))
        external[name] = {i.split(".")[0] for i in imported}
        for target in imported:
            if target in modules and target != name:
                graph.add_edge(name, target)
    return graph, external


def _part(module: str) -> str:
    """The krypton_ql part a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "*"


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_every_krypton_ql_part_has_a_layer() -> None:
    graph, _ = _graph()
    known = {part for layer in LAYERS for part in layer}
    parts = {_part(m) for m in graph if m.startswith("krypton_ql")}
    assert parts <= known, f"parts without a layer: {sorted(parts - known)}"


def test_krypton_ql_imports_only_downwards() -> None:
    graph, _ = _graph()
    level = {part: index for index, layer in enumerate(LAYERS) for part in layer}
    upward = [
        (source, target)
        for source, target in graph.edges
        if source.startswith("krypton_ql")
        and target.startswith("krypton_ql")
        and level[_part(target)] > level[_part(source)]
    ]
    assert not upward, f"imports of a higher layer: {upward}"


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


def test_only_the_pipeline_imports_rules() -> None:
    graph, _ = _graph()
    importers = {
        source
        for source, target in graph.edges
        if target.startswith("compiler.rules")
        and not source.startswith("compiler.rules")
        and source != "compiler.pipeline"
    }
    assert not importers, f"modules importing a rule: {sorted(importers)}"


def test_no_library_module_reads_the_environment() -> None:
    """``os.environ`` / ``os.getenv`` only in the command line and the examples (not here)."""
    readers = []
    for name, path in _modules().items():
        if name.startswith("krypton_ql.apps"):
            continue
        text = path.read_text()
        if "os.environ" in text or "os.getenv" in text or "getenv(" in text:
            readers.append(name)
    assert not readers, f"library modules reading the environment: {readers}"
