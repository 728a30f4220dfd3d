"""The three checks every rule gets: golden rewritten lines, equivalence, ``verify()``."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import krypton_ql as kql
from compiler.explain import render_plan
from tests.helpers import assert_matches_oracle
from tests.profiles import examples as scaled


def rewritten_lines(model: nn.Module, shape: tuple[int, int, int], **options) -> list[str]:
    options.setdefault("patch", 3)
    plan = kql.compile(model, shape, batch_size=8, **options)
    plan.optimized.plan.verify()
    return render_plan(plan.optimized.plan, rewritten=True)


def fired(model: nn.Module, shape: tuple[int, int, int], **options) -> dict[str, int]:
    options.setdefault("patch", 3)
    return dict(kql.compile(model, shape, batch_size=8, **options).optimized.rules_fired)


def check_equivalence(
    model: nn.Module, shape: tuple[int, int, int], examples: int = 40, **fixed
) -> None:
    """The rewritten plan computes what the model computes (the independent oracle), for
    random non-square patches and strides, colours and images."""
    height, width = shape[1:]

    @settings(max_examples=scaled(examples))
    @given(
        patch=st.tuples(st.integers(1, height), st.integers(1, width)),
        stride=st.tuples(st.integers(1, 4), st.integers(1, 4)),
        color=st.floats(-2, 2, width=32),
        seed=st.integers(0, 1000),
    )
    def equivalent(patch, stride, color: float, seed: int) -> None:
        torch.manual_seed(seed)
        image = torch.randn(shape)
        options = dict(patch=patch, stride=stride, color=color, score="logit")
        exact = kql.compile(model, shape, **options, **fixed).run(image, progress=False)
        assert_matches_oracle(exact, model, image, **options)

    equivalent()
