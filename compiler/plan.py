"""A plan: IR nodes held in a ``networkx.DiGraph`` (edges run from producer to consumer)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import networkx as nx

from compiler.errors import KryptonError
from compiler.ir import (
    Combine,
    Concat,
    Input,
    JoinAggregate,
    Node,
    Occlude,
    Pool,
    State,
)


@dataclass(frozen=True, slots=True)
class Batching:
    """How the queries of a plan are grouped into batches."""

    queries: int
    batch_size: int
    bytes_per_query: int
    budget: int | None

    @property
    def batches(self) -> int:
        return -(-self.queries // self.batch_size)


class Plan:
    """An immutable DAG of nodes with one output. Rewrites build new plans."""

    __slots__ = ("_graph", "_order", "output", "batching")

    def __init__(self, nodes: Iterable[Node], output: str, batching: Batching | None = None):
        graph = nx.DiGraph()
        for index, node in enumerate(nodes):
            graph.add_node(node.name, node=node, index=index)
        for name in graph.nodes:
            for source in graph.nodes[name]["node"].inputs:
                if source not in graph:
                    raise KryptonError(f"plan node {name!r} reads unknown node {source!r}")
                graph.add_edge(source, name)
        if not nx.is_directed_acyclic_graph(graph):
            raise KryptonError("plan has a cycle")
        self._graph = graph
        # Deterministic topological order: ties broken by insertion order.
        self._order = tuple(
            nx.lexicographical_topological_sort(graph, key=lambda n: graph.nodes[n]["index"])
        )
        self.output = output
        self.batching = batching

    def __iter__(self) -> Iterator[Node]:
        return (self._graph.nodes[name]["node"] for name in self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._graph

    def __getitem__(self, name: str) -> Node:
        return self._graph.nodes[name]["node"]

    @property
    def graph(self) -> nx.DiGraph:
        return self._graph

    def consumers(self, name: str) -> tuple[str, ...]:
        return tuple(sorted(self._graph.successors(name), key=self._order.index))

    def with_batching(self, batching: Batching) -> Plan:
        return Plan(list(self), self.output, batching)

    def verify(self) -> None:
        """Check every node's local invariants; raise ``KryptonError`` on the first violation."""
        for node in self:
            verify_node(node, self)


def verify_node(node: Node, plan: Plan) -> None:
    """Local invariants of one node: arity, schema agreement and a consistent update form."""
    op = node.op
    inputs = [plan[name] for name in node.inputs]
    arity = {Input: 0, Occlude: 1, JoinAggregate: 1, Pool: 1, Combine: 2}
    expected = arity.get(type(op))
    if expected is not None and len(inputs) != expected:
        _fail(node, f"expects {expected} inputs, has {len(inputs)}")
    if isinstance(op, (JoinAggregate, Pool)) and not inputs[0].schema.is_spatial:
        _fail(node, "reads a non-spatial input")
    if isinstance(op, JoinAggregate):
        if inputs[0].schema.channels != op.in_channels:
            _fail(node, f"reads {inputs[0].schema.channels} channels, the weight {op.in_channels}")
        if node.schema.channels != op.out_channels:
            _fail(node, "output channels disagree with the weight")
    if isinstance(op, Concat):
        total = sum(i.schema.channels for i in inputs)
        if total != node.schema.channels:
            _fail(node, f"concatenates {total} channels into {node.schema.channels}")
    _verify_update(node, inputs)


def _verify_update(node: Node, inputs: list[Node]) -> None:
    update = node.update
    if update is None:
        return
    if update.state is State.BOX:
        if update.box is None or not node.schema.is_spatial:
            _fail(node, "a box update needs a spatial schema and a box size")
        size = node.schema.size
        if not (0 < update.box.h <= size.h and 0 < update.box.w <= size.w):
            _fail(node, f"box {update.box} does not fit the map {size}")
    if update.state is State.CLEAN and any(i.state is not State.CLEAN for i in inputs):
        _fail(node, "is clean but reads an updated input")
    if update.state is State.BOX and any(i.state is State.FULL for i in inputs):
        _fail(node, "is boxed but reads a full per-query input")


def _fail(node: Node, message: str) -> None:
    raise KryptonError(f"invalid plan: node {node.name!r} ({type(node.op).__name__}) {message}")
