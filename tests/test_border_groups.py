"""Grid plans split by the patch's distance to the border (``OcclusionPlan._border_groups``):
each group's boxes fit its queries, and the heatmap is still exactly the oracle's — whole
grids, chosen positions, other fills, and progress over every group."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import krypton_ql as kql
from compiler.boxes import Positions
from compiler.types import Size
from krypton_ql.plans import occlusion
from tests import oracle
from tests.helpers import assert_matches_oracle, responsive


def _deep_cnn() -> nn.Module:
    """Five 5×5 convolutions and a pool (48 px inputs): boxes grow far enough for the border
    to matter."""
    torch.manual_seed(5)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 5, padding=2), nn.ReLU()]
    for index in range(4):
        layers += [nn.Conv2d(8, 8, 5, padding=2), nn.ReLU()]
        if index == 1:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(8 * 24 * 24, 5)]  # every place counts
    return nn.Sequential(*layers).eval()


@pytest.fixture
def groups_pay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Border groups for these tiny models too: compiling a group counted as free."""
    monkeypatch.setitem(occlusion.GROUP_COMPILE_FMA, False, 0.0)


@pytest.mark.usefixtures("groups_pay")
def test_border_groups_equal_the_oracle() -> None:
    image = torch.rand(3, 48, 48)
    model = responsive(_deep_cnn(), image, spread=8.0)
    plan = kql.compile(model, (3, 48, 48), patch=4, stride=1, score="logit")
    assert len(plan.groups) == 9 and sum(len(g.members) for g in plan.groups) == 45 * 45
    corner = plan.groups[0]  # the positions near the top and left borders
    assert corner.physical.nodes[-1].name == plan.physical.nodes[-1].name
    centre = Positions.centre(Size(48, 48), Size(4, 4))
    assert int(corner.positions.starts[0].max()) < int(centre.starts[0][0])
    assert "== border groups" in plan.explain() and "together:" in plan.explain()
    got = plan.run(image, progress=False)
    assert_matches_oracle(got, model, image, patch=4, stride=1, score="logit")
    seen: list[int] = []
    chosen = torch.tensor([0, 1, 44, 45 * 22 + 22, 45 * 45 - 1])
    result = plan.evaluate(image, positions=chosen, progress=lambda done, total: seen.append(done))
    flat = result.heatmaps[0, 0].reshape(-1)
    expected = oracle.heatmap(model, image, 4, 1, score="logit").reshape(-1)
    assert torch.allclose(flat[chosen].double(), expected[chosen], atol=1e-4)
    assert torch.isnan(flat).sum() == 45 * 45 - len(chosen) and seen == sorted(seen)
    assert seen[-1] == len(chosen) and result.queries == len(chosen)


@pytest.mark.usefixtures("groups_pay")
def test_border_groups_with_a_per_pixel_baseline() -> None:
    image = torch.rand(2, 3, 48, 48)
    model = responsive(_deep_cnn(), image, spread=8.0)
    baseline = torch.rand(3, 48, 48)
    got = kql.occlusion_heatmap(model, image, patch=6, stride=1, fill=kql.Fill.per_pixel(baseline),
                                score="logit", progress=False)  # fmt: skip
    plan = kql.compile(model, (3, 48, 48), patch=6, stride=1, score="logit")
    assert plan.groups
    cells = [0, 1, 2, 5, 13, 21, 29, 37, 40, 41, 42]  # both borders, and between them
    for n in range(2):
        expected = torch.full((43, 43), float("nan"), dtype=torch.float64)
        for y in cells:
            for x in cells:
                copy = image[n].clone()
                copy[:, y : y + 6, x : x + 6] = baseline[:, y : y + 6, x : x + 6]
                with torch.no_grad():
                    expected[y, x] = model(copy[None]).double()[
                        0, int(model(image[n : n + 1]).argmax())
                    ]
        picked = expected[cells][:, cells]
        assert float(picked.max() - picked.min()) > 1e-2  # the occlusion matters
        assert torch.allclose(got[n].double()[cells][:, cells], picked, atol=1e-4)


def test_a_plan_whose_groups_cannot_pay_for_their_compile_compiles_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = kql.compile(_deep_cnn(), (3, 48, 48), patch=4, stride=1, score="logit")
    compiled: list[object] = []
    monkeypatch.setattr(occlusion, "optimize", lambda *args: compiled.append(args))
    assert plan.groups == [] and compiled == []  # 2,025 queries of a tiny model: 9 compiles lose


@pytest.mark.usefixtures("groups_pay")
def test_small_grids_and_approximate_plans_run_as_one_plan() -> None:
    model = _deep_cnn()
    assert kql.compile(model, (3, 48, 48), patch=4, stride=8).groups == []  # groups too small
    assert kql.compile(model, (3, 48, 48), patch=4, stride=1, tau=0.5).groups == []
