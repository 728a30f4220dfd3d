"""fold_pad_into_conv: ``Conv_p(Pad_q(A)) = Conv_{p+q}(A)`` for zero padding (exact).

Identity: zero-padding a map and then convolving it equals convolving it with the padding
added to the convolution's own (possibly asymmetric, e.g. TensorFlow "SAME") padding, because
a convolution's padding cells are zeros. Preconditions: the pad value is 0 and the padded map
feeds only this convolution.
"""

from __future__ import annotations

from dataclasses import replace

from compiler.ir import JoinAggregate, Node, Pad
from compiler.rules.base import RuleContext


def fold_pad_into_conv(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, JoinAggregate):
        return None
    (source,) = ctx.inputs(node)
    if not isinstance(source.op, Pad) or source.op.value != 0.0:
        return None
    if ctx.consumers.get(source.name, ()) != (node.name,):
        return None
    window = replace(node.op.window, padding=node.op.window.padding + source.op.padding)
    op = replace(node.op, window=window)
    return replace(node, op=op, inputs=source.inputs)  # Conv_p ∘ Pad_q → Conv_{p+q}
