"""``krypton_ql.captum.FeatureAblation`` against Captum's own ``FeatureAblation``: the same
attributions for shared, per-example and per-channel masks, every kind of baseline and
target, no mask at all; what the engine cannot take goes to Captum with a reason; what Captum
rejects is rejected as Captum rejects it."""

from __future__ import annotations

import pytest
import torch
from captum.attr import FeatureAblation as CaptumFeatureAblation
from torch import nn

from krypton_ql.captum import FeatureAblation
from tests.helpers import small_cnn


def _blocks(height: int, width: int, side: int) -> torch.Tensor:
    rows, cols = torch.arange(height) // side, torch.arange(width) // side
    return rows[:, None] * (-(-width // side)) + cols[None, :]


def _same(model: nn.Module, inputs, accelerated: bool = True, **arguments) -> None:
    ours = FeatureAblation(model)
    got = ours.attribute(inputs, **arguments)
    expected = CaptumFeatureAblation(model).attribute(inputs, **arguments)
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected)
        got, expected = got[0], expected[0]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (ours.delegated is None) == accelerated, ours.delegated


def test_masks_baselines_and_targets_as_captum_takes_them() -> None:
    torch.manual_seed(0)
    model, x = small_cnn(), torch.rand(3, 3, 16, 12)
    blocks = _blocks(16, 12, 4)
    odd = blocks.clone()
    odd[0, :] = 40  # a thin row, and a label in two places
    odd[15, 11] = 40
    _same(model, x, target=1, feature_mask=blocks[None, None])
    _same(model, x, target=[0, 1, 2], feature_mask=odd)  # [H, W]: broadcast
    _same(model, x, target=torch.tensor([2, 0, 1]), feature_mask=blocks[None], baselines=0.5)
    per_example = torch.stack([blocks, blocks.flip(0), odd])[:, None]
    _same(model, x, target=3, feature_mask=per_example, baselines=torch.rand(3, 3, 16, 12))
    per_channel = torch.stack([blocks, blocks + 100, odd + 200])[None]
    _same(model, x, target=0, feature_mask=per_channel, baselines=torch.rand(1, 3, 1, 1))
    _same(model, x, target=0, feature_mask=blocks.float())  # floats that hold integers
    _same(model, (x,), target=0, feature_mask=(blocks[None, None],), baselines=(0.25,))


def test_no_mask_ablates_every_element() -> None:
    torch.manual_seed(1)
    model, x = small_cnn(), torch.rand(2, 3, 6, 5)
    _same(model, x, target=1)


def test_one_output_per_example_needs_no_target() -> None:
    torch.manual_seed(2)
    classifier = small_cnn()

    class OneScore(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return classifier(x)[:, 2]

    x = torch.rand(2, 3, 12, 12)
    _same(OneScore().eval(), x, feature_mask=_blocks(12, 12, 3))


def test_signals_and_volumes() -> None:
    torch.manual_seed(3)
    signal_model = nn.Sequential(
        nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    _same(signal_model, torch.randn(2, 2, 30), target=2, feature_mask=torch.arange(30) // 6)
    volume_model = nn.Sequential(
        nn.Conv3d(1, 3, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, 2)
    ).eval()  # fmt: skip
    mask = (torch.arange(6)[:, None, None] // 3) * 4 + _blocks(8, 8, 4)[None]
    _same(volume_model, torch.rand(1, 1, 6, 8, 8), target=1, feature_mask=mask[None, None])


def test_what_the_engine_cannot_take_goes_to_captum(caplog) -> None:
    torch.manual_seed(4)
    model, x = small_cnn(), torch.rand(2, 3, 8, 8)
    scattered = torch.randint(0, 3, (8, 8))  # every feature spans the whole image
    _same(model, x, accelerated=False, target=0, feature_mask=scattered)
    assert "no feature is spatially local" in caplog.text

    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return model(a + b)

    _same(Two().eval(), (x, x), accelerated=False, target=0)
    _same(Two().eval(), x, accelerated=False, target=0, additional_forward_args=(x,),
          feature_mask=_blocks(8, 8, 4))  # fmt: skip
    _same(model, x, accelerated=False, target=0, feature_mask=_blocks(8, 8, 4) + 0.5)
    trained = small_cnn().train()
    ours = FeatureAblation(trained)
    ours.attribute(x, target=0, feature_mask=_blocks(8, 8, 4))
    assert ours.delegated == "the model is in training mode"


def test_what_captum_rejects_is_rejected_alike() -> None:
    model, x = small_cnn(), torch.rand(2, 3, 8, 8)
    mask = _blocks(8, 8, 4)
    cases = [
        (dict(target=0, feature_mask=mask, perturbations_per_eval=0), AssertionError),
        (dict(target=[0, 1, 2], feature_mask=mask), AssertionError),
        (dict(target=7, feature_mask=mask), IndexError),
        (dict(target=0, feature_mask=torch.zeros(1, 1, 7, 8, dtype=torch.long)), RuntimeError),
        (dict(target=0, feature_mask=mask, baselines=torch.zeros(3, 3, 8, 8)), RuntimeError),
    ]
    for arguments, error in cases:
        with pytest.raises(error):
            CaptumFeatureAblation(model).attribute(x, **arguments)
        with pytest.raises(error):
            FeatureAblation(model).attribute(x, **arguments)


def test_show_progress_draws_one_bar_as_captum_labels_it(capsys) -> None:
    """Every plan's queries advance one bar, labelled as Captum's, that ends at 100% once."""
    torch.manual_seed(5)
    model, x = small_cnn(), torch.rand(2, 3, 12, 12)
    mask = _blocks(12, 12, 4)
    mask[0, 0] = 50  # a one-cell feature: a second plan
    ours = FeatureAblation(model)
    ours.attribute(x, target=0, feature_mask=mask, show_progress=True)
    assert len(ours.last_result.buckets[0].buckets) == 2
    assert capsys.readouterr().err.count("Feature Ablation attribution: 100%") == 1


def test_the_drop_ins_are_what_captums_wrappers_take() -> None:
    """Captum's wrappers and test helpers ask an attribution method for ``multiplies_by_inputs``,
    ``has_convergence_delta()`` and the unwrapped ``attribute.__wrapped__`` (``NoiseTunnel``);
    the drop-ins are subclasses of Captum's classes, so what Captum asks of them is there, and
    settings made on the instance (``use_weights``) reach Captum when a call is handed to it."""
    from captum.attr import NoiseTunnel
    from captum.attr import Occlusion as CaptumOcclusion

    from krypton_ql.captum import Occlusion

    torch.manual_seed(7)
    model, images = small_cnn(), torch.rand(2, 3, 12, 12)
    labels = torch.arange(144).reshape(1, 1, 12, 12) // 36
    for ours, theirs in ((FeatureAblation(model), CaptumFeatureAblation(model)),
                         (Occlusion(model), CaptumOcclusion(model))):  # fmt: skip
        assert isinstance(ours, type(theirs)) and ours.multiplies_by_inputs
        assert ours.has_convergence_delta() is False and callable(ours.attribute.__wrapped__)
    # NoiseTunnel over an accelerated call equals NoiseTunnel over Captum's (the same noise).
    for ours, theirs, options in (
        (FeatureAblation(model), CaptumFeatureAblation(model), {"feature_mask": labels}),
        (Occlusion(model), CaptumOcclusion(model),
         {"sliding_window_shapes": (3, 4, 4), "strides": (3, 4, 4)}),
    ):  # fmt: skip
        torch.manual_seed(1)
        got = NoiseTunnel(ours).attribute(images, nt_samples=3, stdevs=0.1, target=1, **options)
        assert ours.delegated is None, ours.delegated
        torch.manual_seed(1)
        expected = NoiseTunnel(theirs).attribute(images, nt_samples=3, stdevs=0.1, target=1,
                                                 **options)  # fmt: skip
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # use_weights on the instance reaches Captum on a delegated call (one feature per column).
    flat = nn.Sequential(nn.Linear(3, 2)).eval()
    inputs, mask = torch.rand(2, 3), torch.tensor([[0, 0, 1], [1, 1, 0]])
    ours, theirs = FeatureAblation(flat), CaptumFeatureAblation(flat)
    ours.use_weights = theirs.use_weights = True
    torch.testing.assert_close(ours.attribute(inputs, target=0, feature_mask=mask),
                               theirs.attribute(inputs, target=0, feature_mask=mask))  # fmt: skip
    assert ours.delegated is not None
