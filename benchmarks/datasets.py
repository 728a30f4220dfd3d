"""Images per minute of a dataset job (``kql.explain_dataset``): the local engine vs Ray Data
with 1 and 2 workers, on this machine, EfficientNet-Lite0 (the built-in model), exact, fp32.

The photos are scikit-image's, plus flipped and cropped variants up to ``--images`` files
(every file a different picture up to 7 × 16 of them),
written to a temporary folder; every engine explains the same files into its own output
folder. The Ray runs start a local Ray with every CPU (``ray.init(num_cpus=os.cpu_count())``:
one worker gets all the threads, two split them); its start-up is reported
apart from the job.

    python -m benchmarks.datasets [--images 16] [--patch 16] [--stride 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from skimage import data, io

import krypton_ql as kql

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "camera")


def photos(folder: Path, count: int) -> list[Path]:
    """``count`` photo files: the originals, then flips and centre crops of them."""
    base = [getattr(data, name)() for name in PHOTOS]
    base = [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in base]
    variants = []
    for k in range(count):
        photo = base[k % len(base)]
        kind = k // len(base)
        if kind % 2 == 1:
            photo = photo[:, ::-1]
        if kind >= 2:  # centre crops, a sixteenth more of each side per pair of variants
            h, w = photo.shape[:2]
            dy, dx = h * (kind // 2) // 16, w * (kind // 2) // 16
            photo = photo[dy : h - dy, dx : w - dx]
        path = folder / f"photo{k:03d}.png"
        io.imsave(path, np.ascontiguousarray(photo[..., :3]), check_contrast=False)
        variants.append(path)
    return variants


def run(engine: str, folder: Path, out: Path, workers: int | None, patch: int, stride: int):
    started = time.perf_counter()
    kql.explain_dataset(folder, "efficientnet_lite0", patch=patch, stride=stride, out=out,
                        engine=engine, workers=workers, progress=False, overwrite=True)  # fmt: skip
    seconds = time.perf_counter() - started
    table = pq.read_table(out, columns=["seconds", "error"])
    compute = sum(table.column("seconds").to_pylist())
    return {
        "engine": engine if workers is None else f"{engine} ×{workers}",
        "images": table.num_rows,
        "errors": table.num_rows - table.column("error").null_count,
        "job_s": round(seconds, 1),
        "images_per_min": round(60 * table.num_rows / seconds, 2),
        "scan_s_per_image": round(compute / table.num_rows, 2),
        "overhead_s_per_image": round((seconds - compute / (workers or 1)) / table.num_rows, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--engines", default="local,ray1,ray2")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "photos"
        folder.mkdir()
        photos(folder, args.images)
        for engine in args.engines.split(","):
            if engine == "local":
                rows.append(run("local", folder, Path(temporary) / "local", None, args.patch,
                                args.stride))  # fmt: skip
            else:
                import ray

                workers = int(engine[3:])
                started = time.perf_counter()
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                start_s = time.perf_counter() - started
                row = run("ray", folder, Path(temporary) / engine, workers, args.patch,
                          args.stride)  # fmt: skip
                row["ray_start_s"] = round(start_s, 1)
                rows.append(row)
                ray.shutdown()
            print(rows[-1], flush=True)
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
