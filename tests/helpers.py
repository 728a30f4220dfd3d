"""Helpers shared by tests: model calibration and comparisons with the independent oracle."""

from __future__ import annotations

from typing import Any

import hypothesis
import torch
from torch import Tensor, nn

import krypton_ql as kql
from tests import oracle

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}

# fp32 contract (DESIGN §2): raw outputs within 1e-4 of their scale; probabilities within 1e-5,
# or 2e-6 of the logits' scale where that is more. Deep fp32 networks reorder reductions: naive
# re-inference itself moves Inception3's logits by ~1e-5 of their scale between batch sizes,
# and its probabilities by ~1e-6 of the logits' scale (4.5e-5 at a scale of 60).
CONTRACT = {"prob": 1e-5, "logit": 1e-4}
PROB_PER_LOGIT_SCALE = 2e-6
# A comparison proves something only when the occlusion moves the score well beyond float
# rounding: at least this much (of the logits' scale for raw outputs) ...
MINIMUM_MOVEMENT = {"prob": 1e-4, "logit": 1e-3}
# ... and then the heatmap must be within this fraction of the movement (and the contract).
RELATIVE = 1e-2
# Half precision: the movement must be this many times the precision's own rounding of the
# heatmap (|oracle in half − oracle in fp32|), and the heatmap within HALF_RELATIVE of it.
HALF_MARGIN, HALF_RELATIVE = 20.0, 0.1


def calibrate(model: nn.Module, shape: tuple[int, ...], batches: int = 2) -> nn.Module:
    """Give batch norms realistic running statistics (random weights otherwise blow up the
    activations), then switch to eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(4, *shape))
    return model.eval()


def responsive(
    model: nn.Module, image: Tensor, spread: float = 4.0, spatial_dims: int = 2
) -> nn.Module:
    """Scale the classifier (the last linear or convolution layer) so that the logits on
    ``image`` spread over ``spread`` units: random weights otherwise give near-uniform
    probabilities that occlusion barely moves, and a comparison of those proves nothing."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)]
    batch = image[None] if image.dim() == spatial_dims + 1 else image
    with torch.no_grad():
        std = float(model(batch).std())
        if std == 0.0:  # a classifier initialized at zero (torchvision's ViT heads)
            nn.init.normal_(layers[-1].weight)
            std = float(model(batch).std())
        for parameter in layers[-1].parameters():
            parameter.mul_(spread / std)
    return model


def _require(condition: bool, message: str) -> None:
    """In a hypothesis test, skip the draw; elsewhere the workload itself is wrong."""
    if hypothesis.currently_in_test_context():
        hypothesis.assume(condition)
    else:
        assert condition, message


def assert_matches_oracle(
    got: Tensor,
    model: nn.Module,
    image: Tensor,
    *,
    patch: Any,
    stride: Any = 1,
    color: Any = 0.0,
    target: Any = None,
    score: str = "prob",
    precision: str | None = None,
    expected: oracle.Outputs | None = None,
    cells: Tensor | None = None,
    fp64: bool | tuple[oracle.Outputs, oracle.Outputs] = False,
) -> float:
    """``got`` (a heatmap of ``image``, one per image for a batch) equals the oracle's, within a
    limit relative to how far the occlusion moves each image's score; ``cells`` (flat indices
    into the grid) restricts the comparison to the cells computed. Returns the largest error as
    a fraction of the movement.

    ``fp64``: for deep networks whose fp32 references disagree by more than the fp32 limit,
    judge against the oracle in fp64, allowing three times what the fp32 oracle itself is off
    from it (both are fp32 computations in other reduction orders). A pair of oracle outputs
    (fp64, fp32) for ``fp64`` reuses them (one run of both serves every score and target)."""
    dtype = HALF.get(precision) if precision is not None else None
    fp32_error = None
    if fp64:
        if isinstance(fp64, tuple):
            exact, reference = fp64
        else:
            exact = oracle.run(model, image, patch, stride, color, torch.float64)
            reference = oracle.run(model, image, patch, stride, color)
        fp32 = reference.heatmap(target, score)
        fp32_error = (fp32.double() - exact.heatmap(target, score)).reshape(len(fp32), -1)
        expected = exact
    if expected is None:
        expected = oracle.run(model, image, patch, stride, color, dtype)
    truth = expected.heatmap(target, score)
    batched = image.dim() == truth.dim() + 1  # [N, C, *axes] against a [N, *grid] truth
    shape = truth.shape if batched else truth.shape[1:]
    assert got.shape == shape, f"heatmap shape {list(got.shape)}, expected {list(shape)}"
    chosen = cells if cells is not None else torch.arange(truth[0].numel())
    truth = truth.reshape(len(truth), -1)[:, chosen]
    error = (got.double().reshape(len(truth), -1)[:, chosen] - truth).abs().amax(dim=1)
    moved = (truth - expected.clean_scores(target, score)[:, None]).abs().amax(dim=1)
    if dtype is None:
        logits = max(1.0, float(expected.heatmap(target, "logit").abs().max()))
        limit = _fp32_limit(moved, score, logits)
        if fp32_error is not None:
            limit = torch.maximum(limit, 3 * fp32_error[:, chosen].abs().amax(dim=1))
    else:
        fp32 = oracle.run(model, image, patch, stride, color).heatmap(target, score)
        rounding = (truth - fp32.reshape(len(truth), -1)[:, chosen]).abs().amax(dim=1)
        limit = _half_limit(moved, rounding, precision)
    worst = int((error / limit).argmax())
    assert bool((error <= limit).all()), (
        f"{score}: max |Δ| = {float(error[worst]):.3g} on image {worst}, over the limit "
        f"{float(limit[worst]):.3g} (the occlusion moves that score by {float(moved[worst]):.3g})"
    )
    return float((error / moved).max())


def _fp32_limit(moved: Tensor, score: str, logits: float) -> Tensor:
    """1% of the movement, capped by the fp32 contract; the movement must clear the floor."""
    if score == "logit":
        floor, contract = MINIMUM_MOVEMENT[score] * logits, CONTRACT[score] * logits
    else:
        floor = MINIMUM_MOVEMENT[score]
        contract = max(CONTRACT[score], PROB_PER_LOGIT_SCALE * logits)
    _require(bool((moved >= floor).all()), f"occlusion moves the {score} by only "
             f"{moved.tolist()}: the comparison would prove nothing")  # fmt: skip
    return torch.clamp(RELATIVE * moved, max=contract)


def _half_limit(moved: Tensor, rounding: Tensor, precision: str | None) -> Tensor:
    """A tenth of the movement, which must be 20× the precision's rounding of the heatmap."""
    _require(bool((moved >= HALF_MARGIN * rounding).all()), f"occlusion moves {precision} "
             f"scores by {moved.tolist()}, rounding by {rounding.tolist()}")  # fmt: skip
    return HALF_RELATIVE * moved


def assert_exact(model: nn.Module, image: Tensor, **options: Any) -> None:
    """The incremental heatmap equals the oracle's, for probabilities and raw outputs."""
    occlusion = {k: options[k] for k in ("patch", "stride", "color") if k in options}
    expected = oracle.run(model, image, **occlusion)
    for score in ("prob", "logit"):
        exact = kql.occlusion_heatmap(model, image, score=score, progress=False, **options)
        assert_matches_oracle(
            exact, model, image, score=score, target=options.get("target"), expected=expected,
            **occlusion,
        )  # fmt: skip


def small_cnn() -> nn.Module:
    """Conv, ReLU, max pool, conv, global pool, linear: 4 classes, fast on any image size."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()


# Where Triton kernels run in tests: compiled on a GPU when there is one, else in Triton's
# interpreter on CPU tensors (tests/conftest.py switches it on).
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
