"""Migrating from Captum: change one import, get the same attributions faster.

    python examples/migrating_from_captum.py [--photo chelsea] [--window 32] [--stride 16]

Runs ``captum.attr.Occlusion`` and ``krypton_ql.captum.Occlusion`` with the same arguments on
the built-in EfficientNet-Lite0 and a sample photo, and prints both times and the largest
difference between the attributions.
"""

from __future__ import annotations

import argparse
import time

import torch

from krypton_ql import models
from krypton_ql.integrations.captum import Occlusion  # was: from captum.attr import Occlusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="chelsea", choices=models.SAMPLE_PHOTOS)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--stride", type=int, default=16)
    args = parser.parse_args()
    model = models.efficientnet_lite0()
    image = models.preprocess(models.sample_photo(args.photo))[None]
    with torch.no_grad():
        target = int(model(image).argmax())
    arguments = dict(
        sliding_window_shapes=(3, args.window, args.window),
        strides=(3, args.stride, args.stride),
        baselines=0.0,
        target=target,
        perturbations_per_eval=16,
    )
    start = time.perf_counter()
    ours = Occlusion(model).attribute(image, **arguments)
    krypton_time = time.perf_counter() - start
    from captum.attr import Occlusion as CaptumOcclusion

    start = time.perf_counter()
    theirs = CaptumOcclusion(model).attribute(image, **arguments)
    captum_time = time.perf_counter() - start
    difference = float((ours - theirs).abs().max())
    print(f"target class {target} ({models.imagenet_classes()[target]})")
    print(f"captum.attr.Occlusion      {captum_time:6.2f} s")
    print(f"krypton_ql.captum.Occlusion {krypton_time:6.2f} s ({captum_time / krypton_time:.1f}×)")
    print(f"attributions {tuple(ours.shape)}, max |difference| {difference:.1e} "
          f"(scale {float(theirs.abs().max()):.2e})")  # fmt: skip


if __name__ == "__main__":
    main()
