"""Superpixel ablation: ``krypton_ql.captum.FeatureAblation`` against Captum's own
``FeatureAblation``, on this machine, fp32.

SLIC superpixels (scikit-image, ``n_segments`` 50 / 100 / 200, compactness 10) of 224 px
photos (scikit-image's ``astronaut``, ``coffee`` and ``rocket``, none of the tests'),
ResNet18 and VGG16 (torchvision, random weights) and the pretrained EfficientNet-Lite0; target
class 3 (raw outputs, Captum's semantics), baseline 0. Captum runs at each
``perturbations_per_eval`` of ``--ppe`` and its fastest is the baseline. The drop-in's time
is per photo in a loop: the model's export is kept from the previous photo (as a loop over a
data loader keeps it), and each photo's own plans are compiled in the timed call. Beside each
speedup: the theoretical FMA ratio (full forwards of every segment against the plans' FMAs,
each plan's cost at its box's centre times its segments) and the share of wasted cells (the
buckets' boxes beyond the segments' bounding boxes). ``--plans`` adds the bucketing
trade-off: the same run at each ``max_plans``.

    python -m benchmarks.ablation [--models resnet18,vgg16,efficientnet_lite0]
                                  [--segments 50,100,200] [--ppe 4,16] [--plans 1,2,4,8]
                                  [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from benchmarks import common
from krypton_ql import segments
from krypton_ql.captum import FeatureAblation
from krypton_ql.plans.regions import ablate

PHOTOS = ("astronaut", "coffee", "rocket")
TARGET = 3


def _timed(call: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    with torch.no_grad():
        value = call()
    return value, time.perf_counter() - start


def run(name: str, count: int, ppes: list[int], plans: list[int]) -> list[dict]:
    from captum.attr import FeatureAblation as Captum

    model = common.model(name)
    _image_warm = common.photo(name, PHOTOS[-1])[None]
    FeatureAblation(model).attribute(_image_warm, target=TARGET, feature_mask=segments.segment(
        _image_warm[0], "slic", n_segments=count)[None, None])  # fmt: skip  # the export
    rows = []
    for photo in PHOTOS[:2]:
        image = common.photo(name, photo)[None]
        labels = segments.segment(image[0], "slic", n_segments=count)[None, None]
        captum = {}
        for ppe in ppes:
            expected, seconds = _timed(lambda ppe=ppe, image=image, labels=labels: Captum(
                model).attribute(image, target=TARGET, feature_mask=labels,
                                 perturbations_per_eval=ppe))  # fmt: skip
            captum[ppe] = seconds
        ours = FeatureAblation(model)
        got, t_ours = _timed(lambda ours=ours, image=image, labels=labels: ours.attribute(
            image, target=TARGET, feature_mask=labels))  # fmt: skip
        result = ours.last_result
        best = min(captum, key=captum.__getitem__)
        row = {
            "model": name, "photo": photo, "segments_asked": count,
            "segments": len(result.ids), "captum_s_by_ppe": captum, "captum_best_ppe": best,
            "captum_s": captum[best], "ours_s": t_ours, "speedup": captum[best] / t_ours,
            "plans": len(result.buckets[0].buckets), "waste": result.buckets[0].waste,
            "theoretical_speedup": _theory_of(model, image, labels),
            "max_abs_diff": float((got - expected).abs().max()),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
        for limit in plans:
            result, seconds = _timed(lambda limit=limit, image=image, labels=labels: ablate(
                model, image, labels, target=TARGET, score="logit",
                max_plans=limit))  # fmt: skip
            trade = {"model": name, "photo": photo, "segments": len(result.ids),
                     "max_plans": limit, "plans": len(result.buckets[0].buckets),
                     "waste": result.buckets[0].waste, "ours_s": seconds,
                     "speedup": captum[best] / seconds,
                     "theoretical_speedup": _theory_of(model, image, labels, limit)}  # fmt: skip
            print(json.dumps(trade), flush=True)
            rows.append(trade)
    return rows


def _theory_of(model: Any, image: torch.Tensor, labels: torch.Tensor, limit: int = 4) -> float:
    """The plans' FMA ratio (compiled again, untimed)."""
    from compiler.regions import bucketize, regions_of
    from krypton_ql.options import Options
    from krypton_ql.plans.occlusion import OcclusionPlan

    spatial = tuple(image.shape[2:])
    regions = regions_of(labels[0].numpy(), len(spatial))
    naive = incremental = 0.0
    for bucket in bucketize(regions, spatial, max_plans=limit).buckets:
        options = Options.build(tuple(image.shape[1:]), patch=bucket.box, score="logit")
        plan = OcclusionPlan(model, options.at_windows([a.tolist() for a in bucket.starts]))
        naive += plan.centre_cost.naive.fma * len(bucket.members)
        incremental += plan.centre_cost.incremental.fma * len(bucket.members)
    return naive / incremental


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,vgg16,efficientnet_lite0")
    parser.add_argument("--segments", default="50,100,200")
    parser.add_argument("--ppe", default="4,16", help="Captum's perturbations_per_eval to try")
    parser.add_argument("--plans", default="", help="max_plans values for the trade-off")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    ppes = [int(p) for p in args.ppe.split(",")]
    plans = [int(p) for p in args.plans.split(",") if p]
    rows = []
    for name in args.models.split(","):
        for count in (int(c) for c in args.segments.split(",")):
            rows += run(name, count, ppes, plans if count == 100 else [])
    if args.json:
        common.write_json(args.json, "rows", rows)


if __name__ == "__main__":
    main()
