"""SSIM against τ, per image: is the quality of projective-field thresholding monotone in τ?

For each photo (held out from the tuning set) and each τ of the paper's grid, the SSIM of the
τ heatmap against the exact one; a pair of neighbouring τs is *non-monotone* when the smaller τ
scores more than 0.01 higher. EfficientNet-Lite0 (pretrained), 224 px, patch 16, ``--stride``.

    python -m benchmarks.tau_monotone [--stride 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json

import krypton_ql as kql
from benchmarks.approx_guard import held_out
from krypton_ql import models, quality
from krypton_ql.plans.tuning import TAUS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    model = models.efficientnet_lite0()
    photos = held_out()
    shape = (3, 224, 224)
    exact_plan = kql.compile(model, shape, patch=16, stride=args.stride)
    plans = {t: kql.compile(model, shape, patch=16, stride=args.stride, tau=t) for t in TAUS[1:]}
    table: dict[str, dict[str, float]] = {}
    worse = pairs = 0
    for name, image in photos.items():
        exact = exact_plan.run(image, progress=False)
        scores = {"1": 1.0}
        for tau, plan in plans.items():
            scores[f"{tau:g}"] = round(quality.ssim(exact, plan.run(image, progress=False)), 3)
        values = [scores[f"{t:g}"] for t in TAUS]
        worse += sum(low > high + 0.01 for high, low in zip(values, values[1:]))
        pairs += len(values) - 1
        table[name] = scores
        print(name, scores, flush=True)
    print(f"non-monotone neighbouring pairs: {worse} of {pairs}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"stride": args.stride, "ssim": table, "non_monotone": [worse, pairs]},
                      handle, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
