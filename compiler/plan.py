"""A plan: IR nodes held in a ``networkx.DiGraph`` (edges run from producer to consumer)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import networkx as nx

from compiler.errors import KryptonError
from compiler.ir import (
    AdaptivePool,
    Aten,
    BatchNorm,
    Combine,
    Concat,
    Constant,
    Flatten,
    GlobalAvgPool,
    Input,
    JoinAggregate,
    Linear,
    Map,
    Node,
    Occlude,
    Pad,
    Pointwise,
    Pool,
    Project,
    RegionSum,
    Scalar,
    Softmax,
    State,
    Upsample,
)

# How many inputs each operator reads (None: one or more).
ARITY: dict[type, int | None] = {
    Input: 0,
    Constant: 0,
    Occlude: 1,
    JoinAggregate: 1,
    Pool: 1,
    Map: 1,
    Scalar: 1,
    BatchNorm: 1,
    Pad: 1,
    Upsample: 1,
    Project: 1,
    GlobalAvgPool: 1,
    RegionSum: 1,
    AdaptivePool: 1,
    Flatten: 1,
    Linear: 1,
    Softmax: 1,
    Combine: 2,
    Concat: None,
    Pointwise: None,
    Aten: None,
}
# Operators whose output has their (first) input's shape.
SAME_SHAPE = (Occlude, Map, Scalar, BatchNorm, Project, Softmax)


@dataclass(frozen=True, slots=True)
class Batching:
    """How the queries of a plan are grouped into batches; ``capped``: the batch is smaller
    than the budget allows so that no batch buffer outgrows 32-bit offsets
    (``compiler.limits``)."""

    queries: int
    batch_size: int
    bytes_per_query: int
    budget: int | None
    capped: bool = False

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
        node: Node = self._graph.nodes[name]["node"]
        return node

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
            verify_node(node, [self[name] for name in node.inputs])


def verify_node(node: Node, inputs: list[Node]) -> None:
    """Local invariants of one node against its inputs: arity, schema agreement (channels,
    spatial sizes through windows, pads and upsampling, vector lengths) and a consistent update
    form. Every operator kind is checked (``ARITY`` lists them)."""
    op = node.op
    if type(op) not in ARITY:
        _fail(node, "is an operator kind the plan does not know")
    expected = ARITY[type(op)]
    if (expected is None and not inputs) or (expected is not None and len(inputs) != expected):
        wanted = "at least 1" if expected is None else str(expected)
        _fail(node, f"expects {wanted} inputs, has {len(inputs)}")
    _verify_schema(node, inputs)
    _verify_update(node, inputs)


def _verify_schema(node: Node, inputs: list[Node]) -> None:
    op, out = node.op, node.schema
    if not inputs:  # a source (input, constant): nothing to check it against
        return
    first = inputs[0].schema
    if isinstance(op, SAME_SHAPE) and first.shape != out.shape:
        _fail(node, f"maps {first} to {out}; an element-wise operator keeps the shape")
    if isinstance(op, (JoinAggregate, Pool)):
        if not first.is_spatial:
            _fail(node, "reads a non-spatial input")
        if out.is_spatial and op.window.output_size(first.size) != out.size:
            _fail(node, f"window over {first.size} gives {op.window.output_size(first.size)}")
    if isinstance(op, JoinAggregate):
        if first.channels != op.in_channels:
            _fail(node, f"reads {first.channels} channels, the weight {op.in_channels}")
        if out.channels != op.out_channels:
            _fail(node, "output channels disagree with the weight")
    if isinstance(op, Pool) and first.channels != out.channels:
        _fail(node, "a pool changes the channel count")
    if isinstance(op, Pad) and first.is_spatial:
        p = op.padding
        padded = tuple(n + b + a for n, b, a in zip(first.size, p.before, p.after))
        if (first.channels, *padded) != out.shape:
            _fail(node, f"pads {first} to {out}")
    if isinstance(op, Upsample) and first.is_spatial:
        scaled = (first.channels, *(n * s for n, s in zip(first.size, op.scale)))
        if scaled != out.shape:
            _fail(node, f"upsamples {first} to {out}")
    if isinstance(op, (GlobalAvgPool, AdaptivePool)) and first.channels != out.channels:
        _fail(node, "a global pool changes the channel count")
    if isinstance(op, RegionSum):
        if not first.is_spatial or first.channels != out.channels:
            _fail(node, f"aggregates {first} into {out}; a region sum keeps the channels")
        if op.weights is not None and (
            math.prod(op.weights.shape) not in (first.size.area, first.numel)
        ):
            _fail(node, f"weights {op.weights.shape} do not cover the {first} map")
    if isinstance(op, Flatten) and first.numel != out.numel:
        _fail(node, f"flattens {first.numel} values into {out.numel}")
    if isinstance(op, Linear) and (
        out.shape[-1] != op.weight.shape[0]
        or (first.numel if first.is_spatial else first.shape[-1]) != op.weight.shape[1]
    ):  # a spatial input is read flattened (a dense head's delta form)
        _fail(node, f"a {op.weight.shape} weight maps {first} to {out}")
    if isinstance(op, BatchNorm) and op.mean.shape[0] != out.channels:
        _fail(node, "batch norm statistics disagree with the channels")
    if isinstance(op, Concat):
        total = sum(i.schema.channels for i in inputs)
        if total != out.channels:
            _fail(node, f"concatenates {total} channels into {out.channels}")
    if isinstance(op, Combine):
        for source in inputs:
            shape = source.schema.shape
            if len(shape) == len(out.shape) and any(
                d not in (1, o) for d, o in zip(shape, out.shape)
            ):
                _fail(node, f"cannot broadcast {source.schema} to {out}")


def _verify_update(node: Node, inputs: list[Node]) -> None:
    update = node.update
    if update is None:
        return
    if update.state is State.BOX:
        if update.box is None or not node.schema.is_spatial:
            _fail(node, "a box update needs a spatial schema and a box size")
        size = node.schema.size
        if update.box.d != size.d or not all(0 < b <= n for b, n in zip(update.box, size)):
            _fail(node, f"box {update.box} does not fit the map {size}")
    if update.state is State.CLEAN and any(i.state is not State.CLEAN for i in inputs):
        _fail(node, "is clean but reads an updated input")
    if update.state is State.BOX and any(i.state is State.FULL for i in inputs):
        _fail(node, "is boxed but reads a full per-query input")


def _fail(node: Node, message: str) -> NoReturn:
    raise KryptonError(f"invalid plan: node {node.name!r} ({type(node.op).__name__}) {message}")
