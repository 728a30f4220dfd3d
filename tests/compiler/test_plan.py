"""``Plan.verify`` rejects plans that break local invariants."""

from __future__ import annotations

from dataclasses import replace

import pytest

from compiler.errors import KryptonError
from compiler.ir import (
    Activation,
    Arith,
    Combine,
    Concat,
    Flatten,
    Input,
    JoinAggregate,
    Linear,
    Map,
    Node,
    Occlude,
    Pad,
    Pool,
    State,
    Strategy,
    Update,
    Upsample,
    WeightRef,
)
from compiler.plan import Plan
from compiler.types import Agg, Padding, Schema, Size2, Window

WINDOW = Window(Size2(3, 3), Size2(1, 1), Size2(1, 1), Padding.sides(1, 1, 1, 1))


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


def _with(node: Node) -> list[Node]:
    return [*_nodes(), node]


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (Node("m", Map(Activation.RELU), ("conv",), Schema((4, 8, 7))), "keeps the shape"),
        (Node("m", Map(Activation.RELU), ("conv", "x"), Schema((4, 8, 8))), "expects 1 inputs"),
        (
            Node("p", Pool(Agg.MAX, WINDOW), ("conv",), Schema((4, 7, 8))),
            "window over 8×8 gives",
        ),
        (
            Node("pad", Pad(Padding.sides(1, 0, 0, 0)), ("conv",), Schema((4, 8, 8))),
            "pads 4×8×8 to 4×8×8",
        ),
        (Node("u", Upsample(Size2(2, 2)), ("conv",), Schema((4, 16, 15))), "upsamples"),
        (Node("f", Flatten(), ("conv",), Schema((255,))), "flattens 256 values"),
        (
            Node("l", Linear(WeightRef("w", (2, 5)), None), ("conv",), Schema((2,))),
            "weight maps",
        ),
        (
            Node("add", Combine(Arith.ADD), ("conv", "x"), Schema((4, 8, 8))),
            "cannot broadcast 3×8×8",
        ),
        (Node("cat", Concat(), ("conv", "x"), Schema((8, 8, 8))), "concatenates 7 channels"),
        (Node("cat", Concat(), (), Schema((8, 8, 8))), "at least 1 inputs"),
    ],
    ids=[
        "map",
        "arity",
        "pool",
        "pad",
        "upsample",
        "flatten",
        "linear",
        "combine",
        "concat",
        "no-inputs",
    ],  # fmt: skip
)
def test_every_operator_kind_is_checked_against_its_inputs(node: Node, message: str) -> None:
    with pytest.raises(KryptonError, match=message):
        Plan(_with(node), node.name).verify()


def test_a_rule_that_breaks_an_invariant_is_named_at_once(monkeypatch) -> None:
    """The driver verifies what each rule returns, before the walk goes on."""
    import krypton_ql as kql
    from compiler import pipeline
    from compiler.rules.base import Rule
    from tests.helpers import small_cnn

    def shrink_relu(node: Node, ctx) -> Node | None:
        if isinstance(node.op, Map):
            return replace(node, schema=Schema((node.schema.channels, 1, 1)))
        return None

    stages = (pipeline.Stage("normalize", (Rule(shrink_relu),)), *pipeline.STAGES[1:])
    monkeypatch.setattr(pipeline, "STAGES", stages)
    with pytest.raises(KryptonError, match="rule shrink_relu: invalid plan: node '1'"):
        kql.compile(small_cnn(), (3, 8, 8), patch=2)
