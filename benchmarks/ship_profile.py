"""Make the built-in model's tuning profile that ships with the package
(``krypton_ql/models/profiles/``): ``kql.tune(fresh=True)`` on the default tuning set at the
built-in model's default workload, with the command and the machine written into the
profile's ``made_by`` (its costs are times measured on that machine).

    python -m benchmarks.ship_profile [--stride 4] [--ssim 0.9]
"""

from __future__ import annotations

import argparse
import logging
import platform
import time

import torch

import krypton_ql as kql
from krypton_ql import models
from krypton_ql.plans.tuning import SHIPPED, measure_costs


def _rounded(costs: dict[str, float]) -> str:
    return ", ".join(f"τ={key} {value:.2f}" for key, value in sorted(costs.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--ssim", type=float, default=0.9)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model = models.efficientnet_lite0()
    began = time.perf_counter()
    profile = kql.tune(model, ssim=args.ssim, patch=args.patch, stride=args.stride, fresh=True)
    seconds = time.perf_counter() - began
    tuned = dict(profile.costs)
    profile.costs = measure_costs(model, profile)
    profile.made_by = (
        f"python -m benchmarks.ship_profile --patch {args.patch} --stride {args.stride} "
        f"--ssim {args.ssim:g}: kql.tune(fresh=True) on the default tuning set, "
        f"{seconds:.0f} s on {platform.machine()} with {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, fp32, {time.strftime('%Y-%m-%d')}; costs timed again "
        "with measure_costs (exact and each τ in turn on four tuning images; the tune's own, "
        f"each over the whole set at another time: {_rounded(tuned)})"
    )
    SHIPPED.mkdir(parents=True, exist_ok=True)
    path = SHIPPED / f"efficientnet_lite0-p{args.patch}-s{args.stride}-ssim{args.ssim:g}.json"
    profile.save(path)
    print(profile.report(args.ssim))
    print(f"wrote {path} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
