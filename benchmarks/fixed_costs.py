"""Where one call's time goes: the fixed costs of a heatmap (export, import, rewrite, lower,
the clean forward) beside the queries' batches, and what the plan cache saves a loop.

Per model (ResNet18 and VGG16 with random weights, the pretrained EfficientNet-Lite0) and grid
(patch 16 at stride 32: 49 positions; at stride 8: 729), on 224 px photos, fp32:

- the phases of one call, timed one by one: ``torch.export``, import into the IR, the rewrite
  stages, lowering, the clean forward, and the batches with the heatmap's assembly;
- a loop of ``kql.occlusion_heatmap`` over four photos, the first call (export and compile)
  apart from the others (served by the plan cache), against an independent naive loop (one
  batched forward of every occluded copy per photo, written here with torch alone) on the
  small grid;
- the Captum ``Occlusion`` drop-in (window 16, stride 16: 196 positions) called once per
  batch of two photos (a data-loader loop)
  against Captum's own at its best ``perturbations_per_eval``.

    python -m benchmarks.fixed_costs [--models resnet18,vgg16,efficientnet_lite0]
                                     [--ppe 8,32] [--json benchmarks/fixed_costs.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

import krypton_ql as kql
from benchmarks import common
from compiler.importer import export, import_model
from compiler.lower import lower
from compiler.pipeline import optimize
from krypton_ql.options import Options
from krypton_ql.plans.occlusion import OcclusionPlan
from runtime.memory import default_budget

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea")
GRIDS = {"49 positions (stride 32)": 32, "729 positions (stride 8)": 8}


def _clock(call: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    with torch.no_grad():
        value = call()
    return value, time.perf_counter() - start


def phases(model: torch.nn.Module, image: torch.Tensor, stride: int) -> dict[str, float]:
    """Seconds of each phase of one call (``OcclusionPlan``'s steps, run one by one)."""
    shape = tuple(image.shape)
    options = Options.build(shape, patch=16, stride=stride)
    program, t_export = _clock(lambda: export(model, shape))
    occlusion = options.occlusion
    logical, t_import = _clock(
        lambda: import_model(program, shape, occlusion.patch, occlusion.color)
    )
    plan = OcclusionPlan(model, options, program)  # its positions and compile options
    compile_options = options.compile_options(default_budget(image.device))
    optimized, t_rewrite = _clock(lambda: optimize(logical, compile_options, plan.positions))
    _, t_lower = _clock(lambda: lower(optimized.plan))
    _, t_first = _clock(lambda: plan.evaluate(image, progress=False, reuse_clean=True))
    _, t_batches = _clock(lambda: plan.evaluate(image, progress=False, reuse_clean=True))
    return {"export": t_export, "import": t_import, "rewrite": t_rewrite, "lower": t_lower,
            "clean_forward": max(t_first - t_batches, 0.0), "batches": t_batches}  # fmt: skip


def naive(
    model: torch.nn.Module, image: torch.Tensor, stride: int, batch: int = 16
) -> torch.Tensor:
    """The occluded copies of ``image`` (patch 16, zeros) scored by batched full forwards."""
    _, height, width = image.shape
    starts = [(y, x) for y in range(0, height - 15, stride) for x in range(0, width - 15, stride)]
    with torch.no_grad():
        target = int(model(image[None]).argmax())
        scores = []
        for first in range(0, len(starts), batch):
            chunk = starts[first : first + batch]
            copies = image.expand(len(chunk), -1, -1, -1).clone()
            for copy, (y, x) in zip(copies, chunk):
                copy[:, y : y + 16, x : x + 16] = 0.0
            scores.append(torch.softmax(model(copies), 1)[:, target])
    return torch.cat(scores)


def loop(model: torch.nn.Module, name: str, stride: int) -> dict[str, Any]:
    """``occlusion_heatmap`` over the photos (first call apart) and the naive loop."""
    images = [common.photo(name, photo) for photo in PHOTOS]
    kql.plan_cache.clear()
    first, t_first = _clock(lambda: kql.occlusion_heatmap(
        model, images[0], patch=16, stride=stride, progress=False))  # fmt: skip
    rest = []
    for image in images[1:]:
        heatmap, seconds = _clock(lambda image=image: kql.occlusion_heatmap(
            model, image, patch=16, stride=stride, progress=False))  # fmt: skip
        rest.append(seconds)
    t_naive = []
    for image in images:
        scores, seconds = _clock(lambda image=image: naive(model, image, stride))
        t_naive.append(seconds)
    worst = float((scores - heatmap.flatten()).abs().max())  # the last photo's, both ways
    row = {"first_call_s": t_first, "later_calls_s": sum(rest) / len(rest),
           "naive_s": sum(t_naive) / len(t_naive), "cache": kql.plan_cache.info(),
           "max_abs_diff": worst}  # fmt: skip
    row["loop_speedup"] = row["naive_s"] * len(images) / (t_first + sum(rest))
    row["later_speedup"] = row["naive_s"] / row["later_calls_s"]
    return row


def captum_loop(model: torch.nn.Module, name: str, ppes: tuple[int, ...] = (8, 32)) -> dict:
    """The Occlusion drop-in once per batch of two photos against Captum's own."""
    from captum.attr import Occlusion as Captum

    from krypton_ql.captum import Occlusion

    batches = [
        torch.stack([common.photo(name, a), common.photo(name, b)])
        for a, b in (PHOTOS[:2], PHOTOS[2:])
    ]
    arguments = {"sliding_window_shapes": (3, 16, 16), "strides": (3, 16, 16), "target": 3}
    kql.plan_cache.clear()
    ours, got = 0.0, []
    for batch in batches:
        value, seconds = _clock(lambda batch=batch: Occlusion(model).attribute(batch, **arguments))
        ours += seconds
        got.append(value)
    theirs = {}
    for ppe in ppes:
        total, expected = 0.0, []
        for batch in batches:
            value, seconds = _clock(lambda batch=batch, ppe=ppe: Captum(model).attribute(
                batch, perturbations_per_eval=ppe, **arguments))  # fmt: skip
            total += seconds
            expected.append(value)
        theirs[ppe] = total
    best = min(theirs, key=theirs.__getitem__)
    diff = max(float((a - b).abs().max()) for a, b in zip(got, expected))
    return {"ours_s": ours, "captum_s_by_ppe": theirs, "captum_best_ppe": best,
            "speedup": theirs[best] / ours, "max_abs_diff": diff}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,vgg16,efficientnet_lite0")
    parser.add_argument("--ppe", default="8,32", help="Captum's perturbations_per_eval to try")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    ppes = tuple(int(p) for p in args.ppe.split(","))
    rows = []
    for name in args.models.split(","):
        model = common.model(name)
        image = common.photo(name, PHOTOS[0])
        phases(model, image, 32)  # warm-up: first-use costs of torch and the importer
        for grid, stride in GRIDS.items():
            row = {"model": name, "grid": grid, "phases_s": phases(model, image, stride)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        row = {
            "model": name,
            "loop": loop(model, name, 32),
            "captum": captum_loop(model, name, ppes),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        common.write_json(args.json, "rows", rows)


if __name__ == "__main__":
    main()
