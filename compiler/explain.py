"""Deterministic text rendering of plans: ``logical``, ``rewritten`` (with the rules that fired)
and ``physical`` sections. No ids, addresses, timings or device names ever appear.
"""

from __future__ import annotations

from dataclasses import replace

from compiler import relational
from compiler.cost import WORD, Cost, PlanCost, incremental_cost, naive_cost
from compiler.ir import (
    AdaptivePool,
    Aten,
    BatchNorm,
    Combine,
    Constant,
    JoinAggregate,
    Linear,
    Map,
    Node,
    Occlude,
    Operator,
    Pad,
    Pointwise,
    Pool,
    RegionSum,
    Scalar,
    Softmax,
    State,
    Strategy,
    Upsample,
    is_linear,
)
from compiler.physical import PhysicalPlan
from compiler.pipeline import Optimized
from compiler.plan import Plan


def describe(op: Operator) -> str:
    """One line of an operator's parameters.

    >>> from compiler.ir import Activation, Arith
    >>> describe(Map(Activation.LEAKY_RELU, 0.2)), describe(Scalar(Arith.MUL, 0.5))
    ('leaky_relu(0.2)', 'v * 0.5')
    """
    if isinstance(op, Occlude):
        return f"patch={op.patch} color={_floats(op.color)}"
    if isinstance(op, Constant):
        return str(op.ref)
    if isinstance(op, JoinAggregate):
        text = f"{op.in_channels}→{op.out_channels} {op.window}"
        text += f" groups={op.groups}" if op.groups > 1 else ""
        return text + (" +bias" if op.bias is not None else "")
    if isinstance(op, Pool):
        text = f"{op.agg.value} {op.window}"
        return text + ("" if op.count_include_pad else " exclude_pad")
    if isinstance(op, Map):
        args = [f"{v:g}" for v in (op.alpha, op.beta) if v != 0.0]
        return op.fn.value + (f"({', '.join(args)})" if args else "")
    if isinstance(op, Scalar):
        return f"v {op.arith.value} {op.value:g}"
    if isinstance(op, BatchNorm):
        return f"affine eps={op.eps:g}"
    if isinstance(op, Pad):
        return f"pad={op.padding} value={op.value:g}"
    if isinstance(op, Combine):
        return f"a {op.arith.value} b"
    if isinstance(op, AdaptivePool):
        return f"{op.agg.value} → {op.output}"
    if isinstance(op, RegionSum):
        weights = f" ⊙ {op.weights}" if op.weights is not None else ""
        scale = f" × {op.scale:.4g}" if op.scale != 1.0 else ""
        return f"region aggregate Σ_yx v{weights}{scale}"
    if isinstance(op, Linear):
        return f"{op.weight.shape[1]}→{op.weight.shape[0]}"
    if isinstance(op, Softmax):
        return "log" if op.log else ""
    if isinstance(op, Pointwise):
        layout = f" in {op.layouts[0]}" if not op.layouts[0].is_standard else ""
        return f"{op.call.name} per position{layout}"
    if isinstance(op, Upsample):
        return f"{op.mode.name_in(op.scale.d)} ×{op.scale}"
    if isinstance(op, Aten):
        return f"{{full from here: {op.name} — {op.why}}}"
    return ""


def _floats(values: tuple[float, ...]) -> str:
    if len(set(values)) == 1:
        return f"{values[0]:g}"
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _quantity(value: float) -> str:
    """Compact engineering notation.

    >>> _quantity(86704128), _quantity(512), _quantity(0)
    ('86.7M', '512', '0')
    """
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:g}"


def render_plan(plan: Plan, *, rewritten: bool) -> list[str]:
    """One numbered line per node: kind, inputs, source, parameters, schema, form and cost."""
    number = {node.name: index for index, node in enumerate(plan, start=1)}
    lines = []
    for node in plan:
        inputs = ",".join(f"#{number[name]}" for name in node.inputs)
        head = f"{type(node.op).__name__}({inputs})" if inputs else type(node.op).__name__
        parts = [
            f"#{number[node.name]:<3} {head:<22}",
            node.source,
            describe(node.op),
            f"[{node.schema}]",
        ]
        sources = [plan[name] for name in node.inputs]
        cost = incremental_cost(node, sources) if rewritten else naive_cost(node, sources)
        if rewritten:
            parts.append(f"{{{node.update}}}")
        if cost.fma:
            parts.append(f"fma={_quantity(cost.fma)}")
        if rewritten:
            parts.append(_delta_alternative(node, sources, cost))
        lines.append(" ".join(p for p in parts if p).rstrip())
    return lines


def _delta_alternative(node: Node, sources: list[Node], chosen: Cost) -> str:
    """What the delta form of a linear node that kept recompute would cost in addition (see
    ``choose_linear_delta``: equal FMAs, more bytes, so recompute wins by default)."""
    update = node.update
    if (
        update is None
        or update.state is not State.BOX
        or update.strategy is not Strategy.RECOMPUTE
        or not is_linear(node.op)
    ):
        return ""
    delta = incremental_cost(node.with_update(replace(update, strategy=Strategy.DELTA)), sources)
    fma = "same fma" if delta.fma == chosen.fma else f"fma={_quantity(delta.fma)}"
    extra = delta.bytes - chosen.bytes
    return f"(delta form: {fma}, {'+' if extra >= 0 else '−'}{_quantity(abs(extra))}B)"


def render(
    logical: Plan,
    optimized: Optimized,
    physical: PhysicalPlan,
    centre: PlanCost,
    positions: tuple[int, ...],
    *,
    verbose: bool = False,
    sql: bool = False,
    backend: str = "torch reference",
    choices: dict[str, str] | None = None,
) -> str:
    """The full explain text of a compiled occlusion plan (``choices``: the implementation
    each measured step ran, once a run has happened)."""
    lines = ["== logical ==", *render_plan(logical, rewritten=False), ""]
    if verbose:
        lines += _trace(optimized)
    fired = ", ".join(
        f"{'≈' if name in optimized.approximate else ''}{name}×{count}"
        for name, count in optimized.rules_fired
    )
    lines += ["== rewritten ==", f"rules: {fired}", *render_plan(optimized.plan, rewritten=True)]
    lines += [
        f"cost per query (patch at the centre): naive {_quantity(centre.naive.fma)} FMA, "
        f"incremental {_quantity(centre.incremental.fma)} FMA; "
        f"theoretical speedup {centre.speedup:.2f}×",
        "",
        "== physical ==",
        *render_physical(physical, positions, backend, choices or {}),
    ]
    if sql:
        lines += [
            "",
            "== relational (the incremental plan as SQL) ==",
            *relational.render_text(optimized.plan),
        ]
    return "\n".join(lines) + "\n"


def render_physical(
    physical: PhysicalPlan,
    positions: tuple[int, ...],
    backend: str = "torch reference",
    choices: dict[str, str] | None = None,
) -> list[str]:
    batching = physical.batching
    budget = f", budget {_bytes(batching.budget)}" if batching.budget is not None else ""
    if batching.capped:
        budget += " (batch capped: no batch buffer above 2³⁰ values)"
    lines = [
        f"queries {batching.queries} ({'×'.join(map(str, positions))} positions per image), "
        f"batch size {batching.batch_size} → {batching.batches} batches, "
        f"{_bytes(batching.bytes_per_query)} per query{budget}",
    ]
    views = [node for node in physical.nodes if node.name in physical.views]
    view_values = sum(node.schema.numel for node in views)
    lines.append(f"backend: {backend}")
    lines.append(
        f"views kept: {len(views)} of {len(physical.nodes)} nodes, "
        f"{_bytes(view_values * WORD)} per image"
    )
    fused = sum(len(step.epilogue) for step in physical.steps)
    lines.append(f"steps: {len(physical.steps)} ({fused} element-wise nodes fused into epilogues)")
    choices = choices or {}
    for number, step in enumerate(physical.steps, start=1):
        node, update = step.node, step.node.update
        assert update is not None
        text = f"#{number:<3} {step.kernel.value:<18} {node.name}"
        if step.epilogue:
            text += " → " + " → ".join(e.name for e in step.epilogue)
        if update.box is not None:
            text += f" buffer={step.output.schema.shape[0]}×{update.box}"
        if update.read is not None:
            text += f" window={update.read}"
        if step.launch is not None:
            text += f" {step.launch}"
        if node.name in choices:
            text += f" ran={choices[node.name]}"
        lines.append(text)
    return lines


def _bytes(count: int) -> str:
    """
    >>> _bytes(3 << 20), _bytes(512)
    ('3.00 MiB', '512 B')
    """
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.2f} {unit}"
    return f"{count} B"


def _trace(optimized: Optimized) -> list[str]:
    lines, previous = [], None
    for entry in optimized.trace:
        fired = ", ".join(f"{name}×{count}" for name, count in entry.fired) or "no rule fired"
        lines.append(f"== after stage {entry.stage} ({fired}) ==")
        number = {node.name: index for index, node in enumerate(entry.plan, start=1)}
        by_rule: dict[str, list[str]] = {}
        for rule, name in entry.applied:  # the node keeps its name; a dropped one is named
            by_rule.setdefault(rule, []).append(f"#{number[name]}" if name in number else name)
        lines += [f"{rule}: {' '.join(nodes)}" for rule, nodes in by_rule.items()]
        current = render_plan(entry.plan, rewritten=entry.stage != "normalize")
        lines += ["SAME AS ABOVE"] if current == previous else current
        lines.append("")
        previous = current
    return lines
