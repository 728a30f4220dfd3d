"""Occlusion of volumes, signals and clips against their peers, on this machine, fp32.

- ``densenet``, ``resnet``: ``krypton_ql.monai.OcclusionSensitivity`` against MONAI 1.6's own
  ``monai.visualize.OcclusionSensitivity`` (mask 16, ``gaussian``, overlap 0.6, ``n_batch``
  16) on MONAI's ``DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)`` at 96³ and its
  3-D ``resnet18`` at 128³ (random weights, batch norms calibrated on two random volumes).
  MONAI's full run is 3,375 (96³) or 8,000 (128³) full-volume forwards — 22 minutes and
  about 11 hours here — so both run the same call with a ``b_box`` around the centre that
  holds a ``block``³ of windows (MONAI's own option: the same windows, mask and overlap), and
  the full runs are projected from the per-window costs: MONAI pays per window only; the
  drop-in pays a compile and one clean forward per call, then per
  window. With ``--taus``, τ is chosen on a second (tuning) volume as the smallest whose 3-D
  SSIM (``quality.ssim`` over the block's occlusion map of class 1) is ≥ 0.9, then timed and
  scored on the measured volume.
- ``ecg``: a 12-lead, 5,000-sample 1-D residual CNN, ``krypton_ql.captum.Occlusion`` against
  Captum's ``Occlusion`` (window of all 12 leads × 50 samples, stride 25: 199 windows), both
  full, same ``perturbations_per_eval``.
- ``r3d``: torchvision's ``r3d_18`` (random weights, calibrated batch norms) on a
  3×16×112×112 clip, patch 4×16×16, stride 4×16×16 (196 windows), ``kql.occlusion_heatmap``
  against a batched naive loop, both full.

Every row carries the plan's theoretical speedup (its FMA ratio) beside the measured one.

    python -m benchmarks.volumes [--cases densenet,resnet,ecg,r3d] [--block 3]
                                 [--taus 0.95,0.9,0.8,0.7,0.6,0.5,0.4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import krypton_ql as kql
from benchmarks.common import write_json
from krypton_ql import quality

MASK, OVERLAP, INTERVAL = 16, 0.6, 6  # MONAI's defaults: interval int(16·0.4) = 6


def calibrate(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Batch norms with running statistics of ``inputs`` (random weights otherwise blow up or
    flatten the activations), then eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average
    with torch.no_grad():
        model(inputs)
    return model.eval()


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    with torch.no_grad():
        value = call()
    return value, time.perf_counter() - start


def _centre_box(size: int, block: int) -> list[int]:
    """A b_box per axis whose scanned region (widened by (mask − 1)//2 each side, as MONAI
    crops) holds ``block`` windows along each axis."""
    region = MASK + (block - 1) * INTERVAL
    inner = region - 2 * ((MASK - 1) // 2)
    low = (size - inner) // 2
    return [low, low + inner] * 3


def _windows_per_axis(size: int) -> int:
    return -(-(size - MASK) // INTERVAL) + 1


def monai_case(name: str, net: nn.Module, size: int, block: int, taus: list[float]) -> dict:
    from monai.visualize.occlusion_sensitivity import OcclusionSensitivity as Monai

    from krypton_ql.monai import OcclusionSensitivity as Ours

    torch.manual_seed(1)
    calibrate(net, torch.rand(2, 1, size, size, size))
    volume, tuning = torch.rand(1, 1, size, size, size), torch.rand(1, 1, size, size, size)
    box = _centre_box(size, block)
    windows, full_windows = block**3, _windows_per_axis(size) ** 3
    settings = dict(mask_size=MASK, n_batch=16, verbose=False, mode="gaussian", overlap=OVERLAP)
    (expected, _), t_monai = _timed(lambda: Monai(net, **settings)(volume, b_box=box))
    ours = Ours(net, **settings)
    _, t_cold = _timed(lambda: ours(volume, b_box=box))  # compiles the plan
    (got, _), t_warm = _timed(lambda: ours(volume, b_box=box))
    _, t_clean = _timed(lambda: net(volume))
    plan = ours.last_plan
    per_monai, per_ours = t_monai / windows, (t_warm - t_clean) / windows
    compile_s = t_cold - t_warm
    row: dict[str, Any] = {
        "case": name,
        "input": f"1×{size}³",
        "windows_measured": windows,
        "windows_full": full_windows,
        "monai_s": t_monai,
        "ours_cold_s": t_cold,
        "ours_warm_s": t_warm,
        "clean_forward_s": t_clean,
        "compile_s": compile_s,
        "speedup_measured_block": t_monai / t_warm,
        "projected_monai_full_s": per_monai * full_windows,
        "projected_ours_full_s": compile_s + t_clean + per_ours * full_windows,
        "theoretical_speedup_block": plan.theoretical_speedup,
        "max_abs_diff": float((got - expected).abs().max()),
    }
    row["projected_speedup_full"] = row["projected_monai_full_s"] / row["projected_ours_full_s"]
    print(json.dumps(row), flush=True)
    if taus:
        row["tau"] = _tau(net, settings, volume, tuning, box, got, windows, full_windows,
                          per_monai, t_clean, taus)  # fmt: skip
        print(json.dumps(row["tau"]), flush=True)
    return row


def _tau(net, settings, volume, tuning, box, exact, windows, full_windows, per_monai, t_clean,
         taus) -> dict:  # fmt: skip
    """The smallest τ whose SSIM on the tuning volume is ≥ 0.9, timed and scored on ``volume``."""
    from krypton_ql.monai import OcclusionSensitivity as Ours

    reference = Ours(net, **settings)(tuning, b_box=box)[0]
    tuned = {}
    for tau in sorted(taus, reverse=True):
        approx = Ours(net, tau=tau, **settings)(tuning, b_box=box)[0]
        tuned[f"{tau:g}"] = quality.ssim(reference[0, 1], approx[0, 1])
    meeting = [float(t) for t, s in tuned.items() if s >= 0.9]
    if not meeting:
        return {"tuning_ssim": tuned, "chosen": None}
    tau = min(meeting)
    ours = Ours(net, tau=tau, **settings)
    _, t_cold = _timed(lambda: ours(volume, b_box=box))
    (approx, _), t_warm = _timed(lambda: ours(volume, b_box=box))
    per = (t_warm - t_clean) / windows
    full = (t_cold - t_warm) + t_clean + per * full_windows
    return {
        "tuning_ssim": tuned,
        "chosen": tau,
        "ssim_measured_volume": quality.ssim(exact[0, 1], approx[0, 1]),
        "ours_warm_s": t_warm,
        "speedup_measured_block": windows * per_monai / t_warm,
        "projected_speedup_full": per_monai * full_windows / full,
        "theoretical_speedup_block": ours.last_plan.theoretical_speedup,
    }


class _Block1d(nn.Module):
    def __init__(self, channels: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, out, 7, stride, 3, bias=False)
        self.bn1 = nn.BatchNorm1d(out)
        self.conv2 = nn.Conv1d(out, out, 7, 1, 3, bias=False)
        self.bn2 = nn.BatchNorm1d(out)
        self.skip = nn.Sequential(nn.Conv1d(channels, out, 1, stride, bias=False),
                                  nn.BatchNorm1d(out))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


def ecg_model() -> nn.Module:
    """A 12-lead ECG classifier in the style of the published 1-D ResNets: a stride-2 stem, a
    max pool, four residual stages (64 → 256 channels, stride 2 each after the first), a
    global average pool and 5 classes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(12, 64, 15, 2, 7, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
        nn.MaxPool1d(3, 2, 1),
        _Block1d(64, 64, 1), _Block1d(64, 128, 2), _Block1d(128, 192, 2), _Block1d(192, 256, 2),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(256, 5),
    ).eval()  # fmt: skip


def ecg_case() -> dict:
    from captum.attr import Occlusion as Captum

    from krypton_ql.captum import Occlusion as Ours

    model = ecg_model()
    torch.manual_seed(2)
    signal = torch.randn(1, 12, 5000)
    calibrate(model, signal.repeat(4, 1, 1) + torch.randn(4, 12, 5000))
    call = dict(sliding_window_shapes=(12, 50), strides=(12, 25), target=0,
                perturbations_per_eval=64)  # fmt: skip
    expected, t_captum = _timed(lambda: Captum(model).attribute(signal, **call))
    ours = Ours(model)
    _, t_cold = _timed(lambda: ours.attribute(signal, **call))
    got, t_warm = _timed(lambda: ours.attribute(signal, **call))
    plan = kql.compile(model, (12, 5000), patch=(50,), stride=(25,), color=0.0)
    row = {
        "case": "ecg",
        "input": "12×5000",
        "windows": len(plan.positions),
        "captum_s": t_captum,
        "ours_cold_s": t_cold,
        "ours_warm_s": t_warm,
        "speedup_warm": t_captum / t_warm,
        "speedup_cold": t_captum / t_cold,
        "theoretical_speedup": plan.theoretical_speedup,
        "max_abs_diff": float((got - expected).abs().max()),
        "max_abs_value": float(expected.abs().max()),
    }
    print(json.dumps(row), flush=True)
    return row


def r3d_case(batch: int = 16) -> dict:
    import torchvision

    from krypton_ql.plans.naive import occlude

    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18().eval()
    clip = torch.rand(3, 16, 112, 112)
    calibrate(model, torch.rand(4, 3, 16, 112, 112))
    patch, stride = (4, 16, 16), (4, 16, 16)
    plan = kql.compile(model, clip.shape, patch=patch, stride=stride, spatial_dims=3)
    plan.run(clip, progress=False)  # warm
    got, t_ours = _timed(lambda: plan.run(clip, progress=False))
    starts = [torch.as_tensor(s) for s in plan.positions.starts]
    scores = []

    def naive() -> torch.Tensor:
        target = model(clip[None]).argmax(1)
        for i in range(0, len(starts[0]), batch):
            corners = [s[i : i + batch] for s in starts]
            copies = occlude(clip[None].expand(len(corners[0]), -1, -1, -1, -1), corners,
                             plan.occlusion.patch, torch.zeros(3))  # fmt: skip
            scores.append(torch.softmax(model(copies), 1)[:, target].squeeze(1))
        return torch.cat(scores)

    reference, t_naive = _timed(naive)
    row = {
        "case": "r3d_18",
        "input": "3×16×112×112",
        "windows": len(plan.positions),
        "naive_s": t_naive,
        "ours_s": t_ours,
        "speedup": t_naive / t_ours,
        "theoretical_speedup": plan.theoretical_speedup,
        "max_abs_diff": float((got.reshape(-1) - reference).abs().max()),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="densenet,resnet,ecg,r3d")
    parser.add_argument("--block", type=int, default=3, help="windows per axis of the b_box")
    parser.add_argument("--taus", default="0.95,0.9,0.8,0.7,0.6,0.5,0.4", help="empty: no τ rows")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    taus = [float(t) for t in args.taus.split(",") if t]
    rows = []
    for case in args.cases.split(","):
        if case == "densenet":
            from monai.networks.nets import DenseNet121

            torch.manual_seed(0)
            net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)
            rows.append(monai_case("DenseNet121 3-D", net, 96, args.block, taus))
        elif case == "resnet":
            from monai.networks.nets import resnet18

            torch.manual_seed(0)
            net = resnet18(spatial_dims=3, n_input_channels=1, num_classes=2)
            rows.append(monai_case("ResNet-18 3-D", net, 128, args.block, taus))
        elif case == "ecg":
            rows.append(ecg_case())
        elif case == "r3d":
            rows.append(r3d_case())
        else:
            parser.error(f"unknown case {case!r}")
    if args.json:
        write_json(args.json, "rows", rows)


if __name__ == "__main__":
    main()
