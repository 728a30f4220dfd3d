"""The three checks every rule gets: golden rewritten lines, equivalence, ``verify()``."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import krypton_ql as kql
from compiler.explain import render_plan


def rewritten_lines(model: nn.Module, shape: tuple[int, int, int], **options) -> list[str]:
    options.setdefault("patch", 3)
    plan = kql.compile(model, shape, batch_size=8, **options)
    plan.optimized.plan.verify()
    return render_plan(plan.optimized.plan, rewritten=True)


def fired(model: nn.Module, shape: tuple[int, int, int], **options) -> dict[str, int]:
    options.setdefault("patch", 3)
    return dict(kql.compile(model, shape, batch_size=8, **options).optimized.rules_fired)


def check_equivalence(
    model: nn.Module, shape: tuple[int, int, int], examples: int = 12, **fixed
) -> None:
    """The rewritten plan computes what the model computes, for random patches and images."""

    @settings(max_examples=examples)
    @given(
        patch=st.integers(1, min(shape[1:])),
        stride=st.integers(1, 4),
        color=st.floats(-2, 2, width=32),
        seed=st.integers(0, 1000),
    )
    def equivalent(patch: int, stride: int, color: float, seed: int) -> None:
        torch.manual_seed(seed)
        image = torch.randn(shape)
        options = dict(patch=patch, stride=stride, color=color, score="logit")
        exact = kql.compile(model, shape, **options, **fixed).run(image)
        naive = kql.naive_heatmap(model, image, **options)
        scale = max(1.0, float(naive.abs().max()))
        assert float((exact - naive).abs().max()) <= 1e-5 * scale

    equivalent()
