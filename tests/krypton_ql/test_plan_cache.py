"""Plans and exports kept between calls: a second call on the same model and options compiles
nothing, and any change to the weights (in place, ``load_state_dict``, a mode switch), the
options or the model object compiles afresh — a stale plan is never served."""

from __future__ import annotations

import threading

import pytest
import torch

import krypton_ql as kql
from krypton_ql.plans import exports
from tests import oracle
from tests.helpers import small_cnn


@pytest.fixture(autouse=True)
def empty_cache():
    kql.plan_cache.clear()
    yield
    kql.plan_cache.clear()


def _heatmap(model, image, **options):
    return kql.occlusion_heatmap(model, image, patch=4, stride=3, progress=False, **options)


def _close(heatmap: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(heatmap.double(), expected.double(), atol=1e-5)


def _exports(monkeypatch) -> list:
    made: list = []
    real = exports.export

    def counted(model, shape):
        made.append(shape)
        return real(model, shape)

    monkeypatch.setattr(exports, "export", counted)
    return made


def test_a_second_call_is_served_from_the_cache(monkeypatch) -> None:
    torch.manual_seed(0)
    model, images = small_cnn(), torch.rand(3, 3, 14, 13)
    made = _exports(monkeypatch)
    first = _heatmap(model, images[0])
    for image in images[1:]:
        assert _close(_heatmap(model, image), oracle.heatmap(model, image, 4, 3))
    assert kql.plan_cache.info() == {"hits": 2, "misses": 1, "plans": 1, "exports": 1}
    assert len(made) == 1
    assert _close(first, oracle.heatmap(model, images[0], 4, 3))
    assert "kept, served 3 calls" in kql.explain(model, (3, 14, 13), patch=4, stride=3)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m[0].weight.mul_(0.5),
        lambda m: m[6].bias[:2].add_(2.0),
        lambda m: m.load_state_dict({k: v * 1.5 for k, v in m.state_dict().items()}),
        lambda m: m[0].weight.copy_(torch.randn_like(m[0].weight)),
    ],
    ids=["mul_", "bias add_", "load_state_dict", "copy_"],
)
def test_changed_weights_never_serve_a_stale_plan(change) -> None:
    torch.manual_seed(1)
    model, image = small_cnn(), torch.rand(3, 12, 12)
    before = _heatmap(model, image)
    with torch.no_grad():
        change(model)
    after = _heatmap(model, image)
    assert kql.plan_cache.info()["misses"] == 2
    assert _close(after, oracle.heatmap(model, image, 4, 3))
    assert not torch.allclose(after, before, atol=1e-5)


def test_a_mode_switch_and_other_options_compile_afresh() -> None:
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()  # fmt: skip
    image = torch.rand(3, 12, 12)
    _heatmap(model, image)
    _heatmap(model, image, color=0.5)
    _heatmap(model, image, score="logit")
    model.train()
    model.eval()  # back in eval mode: the versions are equal again, the plan is served
    _heatmap(model, image)
    assert kql.plan_cache.info()["misses"] == 3 and kql.plan_cache.info()["hits"] == 1
    twin = small_cnn()  # another model object: never another model's plan
    twin.load_state_dict(small_cnn().state_dict())
    _heatmap(twin, image)
    assert kql.plan_cache.info()["misses"] == 4


def test_the_cache_is_bounded_and_cleared() -> None:
    torch.manual_seed(3)
    model = small_cnn()
    for size in range(10, 10 + kql.plan_cache.capacity + 3):
        _heatmap(model, torch.rand(3, size, size))
    assert len(kql.plan_cache) == kql.plan_cache.capacity
    assert kql.plan_cache.info()["exports"] <= exports.EXPORTS_KEPT
    kql.plan_cache.clear()
    assert kql.plan_cache.info() == {"hits": 0, "misses": 0, "plans": 0, "exports": 0}


def test_threads_never_share_a_plan_at_once() -> None:
    torch.manual_seed(4)
    model, images = small_cnn(), torch.rand(6, 3, 16, 16)
    expected = [oracle.heatmap(model, image, 4, 3) for image in images]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = _heatmap(model, images[index])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index, heatmap in results.items():
        assert _close(heatmap, expected[index])


def test_the_captum_drop_in_compiles_once_per_model_and_shape(monkeypatch) -> None:
    from krypton_ql.captum import Occlusion

    torch.manual_seed(5)
    model, batches = small_cnn(), torch.rand(3, 2, 3, 12, 12)
    made = _exports(monkeypatch)
    for batch in batches:  # a loop over a data loader: one Occlusion per batch, as Captum users do
        Occlusion(model).attribute(batch, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2),
                                   target=1)  # fmt: skip
    assert kql.plan_cache.info()["hits"] == 2 and len(made) == 1
