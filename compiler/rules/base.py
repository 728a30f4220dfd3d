"""The rule interface: ``(node, ctx) -> node | nodes | None``, and the context rules read.

A rule never traverses and never mutates: the driver (``compiler.pipeline``) walks the plan in
topological order, offers each node to the rules of a stage, and keeps the first answer. A rule
may return several nodes: the last replaces the matched node, the others are inserted before it
(for example a ``Project``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from compiler import boxes
from compiler.boxes import Origins, Positions
from compiler.ir import Node, Project, State, Strategy, Update
from compiler.options import CompileOptions

RuleResult = Node | tuple[Node, ...] | None


@dataclass(frozen=True)
class RuleContext:
    """Read-only access to the plan being rewritten (a node's inputs are rewritten before it
    is offered) and to the queries. ``nodes`` is a read-only view of the driver's walk; a
    node in it no longer changes within the stage, so its origins are cached."""

    options: CompileOptions
    positions: Positions
    nodes: Mapping[str, Node] = field(default_factory=lambda: MappingProxyType({}))
    consumers: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    _origins: dict[str, boxes.Placed] = field(default_factory=dict, repr=False, compare=False)

    def inputs(self, node: Node) -> list[Node]:
        return [self.nodes[name] for name in node.inputs]

    def origins(self, name: str) -> Origins:
        """Per-query origins of a boxed node already rewritten (``boxes.origins_of``)."""
        return boxes.origins_of(name, self.nodes, self.positions, self._origins)


RuleFn = Callable[[Node, RuleContext], RuleResult]


@dataclass(frozen=True)
class Rule:
    """A named rewrite; ``exact`` is False only for rules in ``rules/approx``."""

    fn: RuleFn
    exact: bool = True

    @property
    def name(self) -> str:
        return self.fn.__name__


def full_update_with_projections(node: Node, ctx: RuleContext) -> tuple[Node, ...]:
    """Make ``node`` a full per-query computation, projecting every boxed input first.

    Shared by the rules that end incremental maintenance (global operators, broadcasts).
    """
    inserted: list[Node] = []
    inputs: list[str] = []
    for source in ctx.inputs(node):
        if source.state is State.BOX:
            project = _projection_of(source)
            if project.name not in ctx.nodes:
                inserted.append(project)
            inputs.append(project.name)
        else:
            inputs.append(source.name)
    rewritten = Node(
        node.name,
        node.op,
        tuple(inputs),
        node.schema,
        node.source,
        Update(State.FULL, Strategy.FULL),
    )
    return (*inserted, rewritten)


def _projection_of(source: Node) -> Node:
    return Node(
        f"{source.name}_project",
        Project(),
        (source.name,),
        source.schema,
        f"view ⊕ patch of {source.name}",
        Update(State.FULL, Strategy.PROJECT),
    )
