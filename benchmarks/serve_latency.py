"""``kql serve``: time to the first visible heatmap and to the whole one, and the server's
overhead against the same run from Python.

The server is started as a user starts it (``kql serve --port 0``: EfficientNet-Lite0, the
built-in photos) and driven over HTTP like the page (POST a run, read its server-sent events).
One warm-up run compiles the plan; then, alternating, ``--repeats`` server runs and as many
Python runs of ``plan.evaluate`` (same options, compiled beforehand, the clean forward
included), 2 s apart so that one process's idle OpenMP workers, which spin for a while after
their last job, do not slow the other's run on a 2-core machine. Reported: the median time to
the first ``cells`` event, to the end of the coarse stage (every 4th row and column: the whole
heatmap visible, coarse), to ``done``, and the overhead ``server / python − 1``.

    python -m benchmarks.serve_latency [--photo chelsea] [--patch 16] [--stride 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

import krypton_ql as kql
from krypton_ql import models


def server_run(client: httpx.Client, options: dict) -> dict[str, float]:
    started = time.perf_counter()
    run = client.post("/api/runs", json=options, headers={"X-KQL-Client": "bench"}).json()["run"]
    times: dict[str, float] = {}
    with client.stream("GET", f"/api/runs/{run}/events", timeout=None) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            now = time.perf_counter() - started
            if event["type"] == "cells":
                times.setdefault("first_cells", now)
                if event["stage"] == 0:
                    times["coarse"] = now
            elif event["type"] == "done":
                times["done"] = now
                times["queries"] = event["queries"]
                break
            elif event["type"] in ("error", "cancelled"):
                raise RuntimeError(event)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default="chelsea")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    command = [str(Path(sys.executable).parent / "kql"), "serve", "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split("open ")[1].split()[0]
        options = dict(image=args.photo, patch=args.patch, stride=args.stride)
        with httpx.Client(base_url=url, timeout=600) as client:
            server_run(client, options)  # compiles the plan
            model = models.efficientnet_lite0()
            image = models.preprocess(models.sample_photo(args.photo))
            plan = kql.compile(model, image.shape, patch=args.patch, stride=args.stride)
            plan.evaluate(image, progress=False)  # warm
            served, python = [], []
            for _ in range(args.repeats):
                time.sleep(2.0)  # the other process's OpenMP workers stop spinning first
                served.append(server_run(client, options))
                time.sleep(2.0)
                started = time.perf_counter()
                plan.evaluate(image, progress=False)
                python.append(time.perf_counter() - started)
                print(served[-1], f"python {python[-1]:.2f} s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = {
        "queries": served[0]["queries"],
        "first_cells_s": round(statistics.median(s["first_cells"] for s in served), 2),
        "coarse_s": round(statistics.median(s["coarse"] for s in served), 2),
        "done_s": round(statistics.median(s["done"] for s in served), 2),
        "python_s": round(statistics.median(python), 2),
    }
    summary["overhead"] = round(summary["done_s"] / summary["python_s"] - 1, 4)
    print(summary)
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(), **vars(args),
                "threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "summary": summary, "server": served, "python": python},
                      handle, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
