"""``krypton_ql.monai.OcclusionSensitivity`` returns what MONAI 1.6's returns: side by side on
small 1-D, 2-D and 3-D models in every mode, overlap and bounding box, MONAI's errors, and
MONAI's own test file run against the drop-in."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.visualize.occlusion_sensitivity import OcclusionSensitivity as Monai
from torch import nn

from krypton_ql.monai import OcclusionSensitivity

ROOT = Path(__file__).resolve().parents[2]
MONAI_TESTS = ROOT.parent / "shared" / "thirdparty" / "monai" / "test_occlusion_sensitivity.py"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # MONAI's own indexing warnings


def _model(d: int, channels: int = 1, classes: int = 3) -> nn.Module:
    torch.manual_seed(d)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[d]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[d]
    model = nn.Sequential(conv(channels, 4, 3, padding=1), nn.ReLU(), conv(4, 4, 3, stride=2),
                          nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(4, classes))  # fmt: skip
    with torch.no_grad():
        model[-1].weight.mul_(8.0)  # logits that occlusion moves well above rounding
    return model.eval()


def _same(ours, theirs) -> None:
    (got, got_class), (want, want_class) = ours, theirs
    assert type(got) is type(want) and got.shape == want.shape and got.dtype == want.dtype
    assert float((got - want).abs().max()) <= 1e-6
    moved = float(want.amax() - want.amin())
    assert moved > 1e-4, "the comparison would prove nothing"
    decided = (want.topk(2, dim=1).values.diff(dim=1).abs() > 1e-5).squeeze(1)
    assert torch.equal(got_class[:, 0][decided], want_class[:, 0][decided])


CASES = [
    (1, (1, 2, 60), dict(mask_size=8), None),
    (1, (1, 1, 50), dict(mask_size=6, mode="mean_patch", overlap=0.0), [5, 40]),
    (2, (1, 1, 24, 20), dict(mask_size=6), [2, 18, -1, -1]),
    (2, (1, 2, 20, 22), dict(mask_size=(5, 7), mode="mean_img", overlap=0.3), None),
    (2, (1, 1, 18, 18), dict(mask_size=4, mode=0.5, activate=False), [3, 12, 1, 16]),
    (2, (1, 3, 16, 16), dict(mask_size=6, mode="mean_patch", activate=torch.tanh), None),
    (3, (1, 1, 12, 10, 11), dict(mask_size=(4, 5, 3)), [1, 9, -1, -1, 2, 8]),
    (3, (1, 2, 10, 10, 10), dict(mask_size=5, mode="mean_img", overlap=0.5), None),
    (3, (1, 1, 9, 8, 10), dict(mask_size=4, mode=-1.0, overlap=0.0), None),
]


@pytest.mark.parametrize(("d", "shape", "init", "b_box"), CASES)
def test_equals_monai(d, shape, init, b_box) -> None:
    torch.manual_seed(1)
    x = torch.rand(*shape)
    model = _model(d, shape[1])
    ours = OcclusionSensitivity(model, verbose=False, **init)
    got = ours(x, b_box=b_box)
    assert ours.delegated is None and ours.last_plan is not None
    _same(got, Monai(model, verbose=False, **init)(x, b_box=b_box))


def test_mean_patch_warns_that_it_multiplies_as_monai_does() -> None:
    x = torch.rand(1, 1, 16, 16)
    with pytest.warns(UserWarning, match="multiplies each occluded window by the mean"):
        OcclusionSensitivity(_model(2), mode="mean_patch", mask_size=4, verbose=False)(x)


def test_keyword_arguments_go_to_the_model() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _model(2)

        def forward(self, x, scale):
            return self.body(x) * scale

    model, x = Scaled().eval(), torch.rand(1, 1, 16, 16)
    ours = OcclusionSensitivity(model, mask_size=4, verbose=False)
    got = ours(x, scale=3.0)
    assert ours.delegated is None
    _same(got, Monai(model, mask_size=4, verbose=False)(x, scale=3.0))


def test_a_plan_is_reused_until_the_model_changes() -> None:
    model, x = _model(2), torch.rand(1, 1, 16, 16)
    ours = OcclusionSensitivity(model, mask_size=4, verbose=False)
    ours(x)
    first = ours.last_plan
    ours(torch.rand(1, 1, 16, 16))
    assert ours.last_plan is first
    with torch.no_grad():
        model[0].weight.mul_(-1)
    got = ours(x)
    assert ours.last_plan is not first
    _same(got, Monai(model, mask_size=4, verbose=False)(x))


def test_a_callable_mode_goes_to_monai(caplog) -> None:
    """MONAI 1.6 takes a callable mode but its predictor then stops with a RuntimeError; the
    drop-in hands the call to MONAI, so the caller sees the same."""
    model, x = _model(2), torch.rand(1, 1, 12, 12)

    def mode(image, window):
        return window * 0.25

    with pytest.raises(RuntimeError, match="something's gone wrong"):
        Monai(model, mask_size=4, mode=mode, verbose=False)(x)
    ours = OcclusionSensitivity(model, mask_size=4, mode=mode, verbose=False)
    with (
        caplog.at_level(logging.WARNING, logger="krypton_ql.integrations.monai"),
        pytest.raises(RuntimeError, match="something's gone wrong"),
    ):
        ours(x)
    assert "callable mode" in (ours.delegated or "") and "callable mode" in caplog.text


@pytest.mark.parametrize(
    ("init", "x", "error"),
    [
        (dict(mask_size=40), torch.rand(1, 1, 16, 16), ValueError),
        (dict(mask_size=4), torch.rand(2, 1, 16, 16), ValueError),
        (dict(mask_size=4, overlap=1.0), torch.rand(1, 1, 16, 16), ValueError),
        (dict(mode="blur"), torch.rand(1, 1, 16, 16), NotImplementedError),
    ],
)
def test_what_monai_rejects_is_rejected_alike(init, x, error) -> None:
    for implementation in (Monai, OcclusionSensitivity):
        with pytest.raises(error):
            implementation(_model(2), verbose=False, **init)(x)


@pytest.mark.slow
@pytest.mark.skipif(not MONAI_TESTS.exists(), reason="MONAI's test file is not beside the repo")
def test_monais_own_tests_pass_against_the_drop_in() -> None:
    """MONAI's ``test_occlusion_sensitivity.py``, unchanged, with the import swapped by
    ``tests.thirdparty.monai_swap``: every test passes and every call is accelerated."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "-W", "ignore", "-p", "tests.thirdparty.monai_swap", str(MONAI_TESTS)]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed is not None and int(passed.group(1)) == 10, run.stdout[-2000:]
    assert "7 calls accelerated, 0 handed to MONAI" in run.stdout, run.stdout[-2000:]
