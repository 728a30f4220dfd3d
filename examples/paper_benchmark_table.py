"""Reproduce the paper's theoretical-speedup tables (research §2.8: Fig. 3 and Fig. 7a) from
krypton-ql's cost model: FMA ratio of full re-inference to the incremental plan, patch at the
centre, 224 px (Inception3 at 299).

    python examples/paper_benchmark_table.py [--models vgg16,resnet18] [--patches 4,8,16,32]
                                             [--taus 1.0,0.9,0.8,0.7,0.6,0.5,0.4]

The measured tables (time against naive re-inference) are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse

import torchvision

import krypton_ql as kql


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,resnet18")
    parser.add_argument("--patches", default="4,8,16,32")
    parser.add_argument("--taus", default="1.0,0.9,0.8,0.7,0.6,0.5,0.4")
    args = parser.parse_args()
    patches = [int(p) for p in args.patches.split(",")]
    taus = [float(t) for t in args.taus.split(",")]
    for name in args.models.split(","):
        size = 299 if name == "inception_v3" else 224
        options = {"aux_logits": False, "init_weights": False} if name == "inception_v3" else {}
        model = torchvision.models.get_model(name, weights=None, **options).eval()
        print(f"\n{name} ({size} px): theoretical speedup, τ × patch size")
        print("τ \\ patch " + "".join(f"{p:>8d}" for p in patches))
        for tau in taus:
            speedups = [
                kql.compile(
                    model, (3, size, size), patch=p, batch_size=1, tau=tau
                ).theoretical_speedup
                for p in patches
            ]
            print(f"{tau:<10g}" + "".join(f"{s:8.2f}" for s in speedups))


if __name__ == "__main__":
    main()
