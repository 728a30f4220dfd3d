"""``Plan.verify`` rejects plans that break local invariants."""

from __future__ import annotations

from dataclasses import replace

import pytest

from compiler.errors import KryptonError
from compiler.ir import (
    Activation,
    Input,
    JoinAggregate,
    Map,
    Node,
    Occlude,
    State,
    Strategy,
    Update,
    WeightRef,
)
from compiler.plan import Plan
from compiler.types import Padding, Schema, Size2, Window

WINDOW = Window(Size2(3, 3), Size2(1, 1), Size2(1, 1), Padding(1, 1, 1, 1))


def _nodes() -> list[Node]:
    image = Schema((3, 8, 8))
    return [
        Node("x", Input(), (), image, update=Update(State.CLEAN, Strategy.VIEW)),
        Node(
            "occlude",
            Occlude(Size2(2, 2), (0.0,) * 3),
            ("x",),
            image,
            update=Update(State.BOX, Strategy.OCCLUDE, Size2(2, 2)),
        ),
        Node(
            "conv",
            JoinAggregate(WeightRef("w", (4, 3, 3, 3)), None, WINDOW, 1),
            ("occlude",),
            Schema((4, 8, 8)),
            update=Update(State.BOX, Strategy.RECOMPUTE, Size2(4, 4), Size2(6, 6)),
        ),
    ]


def test_a_valid_plan_verifies() -> None:
    Plan(_nodes(), "conv").verify()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda n: replace(n, schema=Schema((5, 8, 8))), "output channels"),
        (
            lambda n: replace(n, op=replace(n.op, weight=WeightRef("w", (4, 2, 3, 3)))),
            "reads 3 channels",
        ),
        (
            lambda n: n.with_update(Update(State.BOX, Strategy.RECOMPUTE, Size2(9, 4))),
            "does not fit",
        ),
        (lambda n: n.with_update(Update(State.CLEAN, Strategy.VIEW)), "clean but reads"),
    ],
    ids=["channels-out", "channels-in", "box-too-big", "clean-reads-box"],
)
def test_broken_invariants_are_reported(change, message: str) -> None:
    nodes = _nodes()
    nodes[2] = change(nodes[2])
    with pytest.raises(KryptonError, match=message):
        Plan(nodes, "conv").verify()


def test_boxed_node_reading_a_full_input_is_rejected() -> None:
    nodes = _nodes()
    nodes[1] = nodes[1].with_update(Update(State.FULL, Strategy.FULL))
    with pytest.raises(KryptonError, match="boxed but reads a full"):
        Plan(nodes, "conv").verify()


def test_unknown_inputs_and_cycles_are_rejected() -> None:
    relu = Node("relu", Map(Activation.RELU), ("nowhere",), Schema((3, 8, 8)))
    with pytest.raises(KryptonError, match="unknown node"):
        Plan([*_nodes(), relu], "relu")
    a = Node("a", Map(Activation.RELU), ("b",), Schema((3, 8, 8)))
    b = Node("b", Map(Activation.RELU), ("a",), Schema((3, 8, 8)))
    with pytest.raises(KryptonError, match="cycle"):
        Plan([a, b], "a")
