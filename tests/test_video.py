"""torchvision's video classifiers (random weights, calibrated batch norms, a classifier scaled
so that occlusion moves the scores) occluded by space-time boxes: exact against the
independent oracle, judged in fp64 (these deep 3-D networks' fp32 references differ from each
other by more than the fp32 limit: r2plus1d_18's fp32 oracle is 1.7e-5 off fp64)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import krypton_ql as kql
from tests import oracle
from tests.helpers import assert_matches_oracle, calibrate, responsive

pytestmark = pytest.mark.slow  # full torchvision architectures

BOX = (4, 8, 8)  # frames × rows × columns


def _video(build, shape: tuple[int, ...]) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    clip = torch.randn(*shape)
    return responsive(calibrate(build(), shape), clip, spatial_dims=3), clip


@pytest.mark.parametrize(
    "build",
    [
        torchvision.models.video.r3d_18,
        torchvision.models.video.mc3_18,
        torchvision.models.video.r2plus1d_18,
    ],
    ids=["r3d_18", "mc3_18", "r2plus1d_18"],
)
def test_video_classifiers_equal_the_oracle(build) -> None:
    model, clip = _video(build, (3, 8, 32, 32))
    references = (oracle.run(model, clip, BOX, BOX, dtype=torch.float64),
                  oracle.run(model, clip, BOX, BOX))  # fmt: skip
    for score in ("prob", "logit"):
        got = kql.occlusion_heatmap(model, clip, patch=BOX, stride=BOX, score=score,
                                    progress=False)  # fmt: skip
        assert got.shape == (2, 4, 4)
        assert_matches_oracle(got, model, clip, patch=BOX, stride=BOX, score=score,
                              fp64=references)  # fmt: skip


def test_a_video_plan_saves_work_and_says_where_it_runs() -> None:
    """The plan of a space-time box skips most of r3d_18's work, and explain names the backend
    of its 3-D steps."""
    model = torchvision.models.video.r3d_18().eval()
    plan = kql.compile(model, (3, 16, 112, 112), patch=(4, 16, 16), stride=(4, 16, 16))
    assert plan.grid == (4, 7, 7)
    assert plan.theoretical_speedup > 2.0
    assert "reference" in plan.explain()


@pytest.mark.zoo
def test_s3d_equals_the_oracle() -> None:
    """S3D's final average pool needs 16 frames at 224×224: a long run (make zoo)."""
    model, clip = _video(torchvision.models.video.s3d, (3, 16, 224, 224))
    box = (8, 56, 56)
    got = kql.occlusion_heatmap(model, clip, patch=box, stride=box, progress=False)
    assert_matches_oracle(got, model, clip, patch=box, stride=box)
