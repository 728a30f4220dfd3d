"""Planted semantic mutations: plausible bugs applied one at a time, the suite run against each.

A mutation tester (``mutmut``, see the README's developer notes) flips operators and constants
at random; the mutations here are the bugs a person would plausibly write in the code every
exactness guarantee rests on — each one leaves the engine running and its heatmaps wrong (or
silently slower) on some geometry. Each is a literal text replacement in one file; the tool
applies it, runs a pytest command, records whether the suite failed (the mutant is *killed*)
and restores the file, whatever happens.

Usage (from the repository root, on a quiet machine)::

    python -m benchmarks.mutation                      # every mutation, the fast suite
    python -m benchmarks.mutation --only pad-origin,delta-sub-operand
    python -m benchmarks.mutation --ci                 # the whole CI suite (HYPOTHESIS_PROFILE=ci)
    python -m benchmarks.mutation --ci --every-failure # every failing test, not only the first
    python -m benchmarks.mutation --list
    python -m benchmarks.mutation --json benchmarks/mutation.json
    python -m benchmarks.mutation --mutmut --json benchmarks/mutmut.json   # after `mutmut run`

This is a tool run, not a test: it takes minutes per surviving mutant. ``--mutmut`` reads the
results of a ``mutmut run`` (``make mutmut``) and prints the score per file and the surviving
mutants' diffs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (which must occur exactly once) with ``new`` in ``path``."""

    name: str
    path: str
    old: str
    new: str
    why: str


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "pad-origin",
        "compiler/boxes.py",
        "tuple(o + b for o, b in zip(origins, before)),",
        "tuple(o for o, b in zip(origins, before)),",
        "a Pad node's box does not move by its top/left padding",
    ),
    Mutation(
        "delta-sub-operand",
        "runtime/reference.py",
        "negative = index == 1 and node.op.arith is Arith.SUB",
        "negative = index == 0 and node.op.arith is Arith.SUB",
        "the delta form of a − b negates the wrong operand",
    ),
    Mutation(
        "avg-ceil-divisor",
        "compiler/ir.py",
        "if self.count_include_pad and not self.window.ceil_mode:",
        "if self.count_include_pad:",
        "an average pool's divisor is taken as constant under ceil_mode",
    ),
    Mutation(
        "grid-drops-clipped-window",
        "compiler/boxes.py",
        "min(math.ceil((n - p) / s) + 1, math.ceil(n / s))",
        "(n - p) // s + 1",
        "the position grid drops the clipped last window along every axis",
    ),
    Mutation(
        "window-size-one-less",
        "compiler/boxes.py",
        "return min(math.ceil((size + extent - 1) / stride), out_dim)",
        "return min(math.ceil((size + extent - 2) / stride), out_dim)",
        "a window operator's output box is one input cell too narrow",
    ),
    Mutation(
        "window-size-one-more",
        "compiler/boxes.py",
        "return min(math.ceil((size + extent - 1) / stride), out_dim)",
        "return min(math.ceil((size + extent) / stride), out_dim)",
        "a window operator's output box is one input cell too wide (exact, silently slower)",
    ),
    Mutation(
        "window-start-ignores-padding",
        "compiler/boxes.py",
        "first = np.maximum(ceil_div(start + pad - extent + 1, stride), 0)",
        "first = np.maximum(ceil_div(start - extent + 1, stride), 0)",
        "the output box's start ignores the window's leading padding",
    ),
    Mutation(
        "bbox-first-operand",
        "compiler/boxes.py",
        "return int(min(np.max(high - low), dim))",
        "return int(min(sizes[0], dim))",
        "an add/concat takes its first operand's box (the paper's static analysis)",
    ),
    Mutation(
        "bbox-start-unclamped",
        "compiler/boxes.py",
        "start: np.ndarray = np.clip(np.minimum.reduce(starts), 0, dim - size)",
        "start: np.ndarray = np.maximum(np.minimum.reduce(starts), 0)",
        "a bounding box that runs past the border is not shifted inward",
    ),
    Mutation(
        "read-origin-left-pad",
        "runtime/values.py",
        "for o, b, e, s, p in zip(origin, box, w.extent, w.stride, w.padding.before)",
        "for o, b, e, s, p in zip(origin, box, w.extent, w.stride, w.padding.before[::-1])",
        "the read-in window's start along each axis uses another axis's padding",
    ),
    Mutation(
        "fold-nonzero-pad",
        "compiler/rules/fold_pad_into_conv.py",
        "if not isinstance(source.op, Pad) or source.op.value != 0.0:",
        "if not isinstance(source.op, Pad):",
        "a constant pad of non-zero value is folded into the convolution's zero padding",
    ),
    Mutation(
        "max-pool-zero-fill",
        "runtime/reference.py",
        'fill = float("-inf") if node.op.agg is Agg.MAX else 0.0',
        "fill = 0.0",
        "a max pool's padding reads zeros instead of −∞",
    ),
    Mutation(
        "global-pool-square",
        "runtime/reference.py",
        "values.sum(dim=spatial_dims) / cells.area",
        "values.sum(dim=spatial_dims) / cells[0] ** cells.d",
        "the incremental global average pool divides by H^d instead of the map's cells",
    ),
    Mutation(
        "occlude-clipped-rows",
        "runtime/reference.py",
        "covered = covered & (axis >= first.reshape(",
        "covered = covered | (axis >= first.reshape(",
        "a clipped last window occludes the cells its inward shift adds",
    ),
    Mutation(
        "conv-kernel-channel-tile",
        "runtime/kernels/gather_conv2d.py",
        "cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels within the group",
        "cols = tl.arange(0, BLOCK_N)  # output channels within the group",
        "the fused convolution computes only the first tile of output channels",
    ),
    Mutation(
        "upsample-origin",
        "compiler/boxes.py",
        "moved = tuple(o * s for o, s in zip(origins, scale))",
        "moved = tuple(o * s for o, s in zip(origins, (*scale[:-1], 1)))",
        "an upsampled box does not move by the factor along the last axis",
    ),
    Mutation(
        "shuffle-is-free",
        "compiler/importer/translators/channels.py",
        "    if before == after:  # only the spatial axes moved: the same relation",
        "    if True:  # only the spatial axes moved: the same relation",
        "a permute that reorders channel axes (a channel shuffle) is taken for a relayout",
    ),
    Mutation(
        "constant-layout",
        "compiler/importer/walk.py",
        "canonical = tensor.movedim(tuple(1 + a for a in layout.axes), tuple(range(-d, 0)))",
        "canonical = tensor",
        "a channels-last constant (ConvNeXt's layer scale) is not moved into [C, H, W]",
    ),
    Mutation(
        "pushdown-over-outer-join",
        "krypton_ql/dsl/bind.py",
        "        return  # an outer join: a filter above it does not commute with the scan",
        "        pass  # an outer join: a filter above it does not commute with the scan",
        "WHERE predicates above an outer join are pushed into the scan below it",
    ),
    Mutation(
        "dense-head-box-row",
        "runtime/reference.py",
        "at: tuple[int, ...] = tuple(o + i for o, i in zip(origin, lead))",
        "at: tuple[int, ...] = tuple(o for o, i in zip(origin, lead))",
        "a dense head's delta reads every row of the box at the box's first row",
    ),
    Mutation(
        "sql-view-over-patch",
        "compiler/relational.py",
        'return update + view, f"COALESCE({alias}u.v, {alias}v.v)"',
        'return update + view, f"COALESCE({alias}v.v, {alias}u.v)"',
        "the plan as SQL reads the clean view where the patch changed it",
    ),
)

# The tests that exercise the engine's exactness, without the slow end-to-end scripts.
FAST = [
    "tests/compiler",
    "tests/runtime",
    "tests/test_end_to_end.py",
    "tests/test_oracle.py",
    "tests/test_approx.py",
    "tests/test_torchvision.py",
    "tests/krypton_ql",
    "compiler",
    "runtime",
]


def apply(mutation: Mutation) -> str:
    """Write the mutant; return the original text."""
    path = ROOT / mutation.path
    original = path.read_text()
    count = original.count(mutation.old)
    if count != 1:
        raise SystemExit(
            f"{mutation.name}: expected the text once in {mutation.path}, found {count}"
        )
    path.write_text(original.replace(mutation.old, mutation.new))
    return original


def run_one(mutation: Mutation, command: list[str], timeout: float) -> dict:
    original = apply(mutation)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_env()
        )
        status = "killed" if done.returncode != 0 else "survived"
        tail = _summary(done.stdout)
    except subprocess.TimeoutExpired:
        status, tail = "timeout", f"no result within {timeout:.0f} s"
    finally:
        (ROOT / mutation.path).write_text(original)
    return {
        "name": mutation.name,
        "file": mutation.path,
        "why": mutation.why,
        "status": status,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": tail,
    }


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HYPOTHESIS_PROFILE", "ci")
    return env


def _summary(stdout: str) -> str:
    """The failing tests and pytest's last line."""
    lines = stdout.strip().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return "\n".join(failed[:12] + lines[-1:])


def mutmut_summary() -> dict:
    """Counts per file and status of the last ``mutmut run``, and every survivor's diff."""
    listing = subprocess.run(
        [_mutmut(), "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    files: dict[str, dict[str, int]] = {}
    survivors = []
    for line in listing.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name:
            continue
        module = name.split(".x_")[0].split(".xǁ")[0]
        counts = files.setdefault(module, {})
        counts[status] = counts.get(status, 0) + 1
        if status == "survived":
            diff = subprocess.run(
                [_mutmut(), "show", name], cwd=ROOT, capture_output=True, text=True
            ).stdout
            survivors.append({"name": name, "diff": diff})
    total = {k: sum(c.get(k, 0) for c in files.values()) for k in ("killed", "survived")}
    checked = total["killed"] + total["survived"]
    score = total["killed"] / checked if checked else float("nan")
    return {"files": files, "total": total, "score": score, "survivors": survivors}


def _mutmut() -> str:
    return str(Path(sys.executable).with_name("mutmut"))


def _print_mutmut(summary: dict) -> None:
    for module, counts in sorted(summary["files"].items()):
        text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        print(f"{module:45} {text}")
    total = summary["total"]
    print(f"score: {summary['score']:.1%} ({total['killed']} killed, {total['survived']} survived)")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mutation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", help="comma-separated mutation names")
    parser.add_argument("--ci", action="store_true", help="run the whole CI suite per mutant")
    parser.add_argument("--tests", nargs="+", help="pytest arguments instead of the fast suite")
    parser.add_argument(
        "--every-failure", action="store_true", help="run on after the first failing test"
    )
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--mutmut", action="store_true", help="summarize the last mutmut run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per mutant")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.mutmut:
        summary = mutmut_summary()
        _print_mutmut(summary)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        return [summary]
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:30} {m.path:38} {m.why}")
        return []
    chosen = MUTATIONS
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {m.name for m in MUTATIONS}
        if unknown:
            parser.error(f"unknown mutations: {', '.join(sorted(unknown))}")
        chosen = tuple(m for m in MUTATIONS if m.name in names)
    tests = [] if args.ci else args.tests or [t for t in FAST if (ROOT / t).exists()]
    stop = [] if args.every_failure else ["-x"]
    command = [sys.executable, "-m", "pytest", *stop, "-q", "-p", "no:cacheprovider", *tests]
    print("command:", " ".join(command[2:]), flush=True)
    results = []
    for mutation in chosen:
        result = run_one(mutation, command, args.timeout)
        results.append(result)
        print(f"{result['status']:8} {result['seconds']:7.1f} s  {mutation.name}: {mutation.why}")
        print("         " + result["summary"].replace("\n", "\n         "), flush=True)
    killed = sum(r["status"] != "survived" for r in results)
    print(f"{killed} of {len(results)} mutants killed")
    if args.json:
        args.json.write_text(json.dumps({"command": command[2:], "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
