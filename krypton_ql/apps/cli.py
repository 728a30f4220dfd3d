"""``kql``: occlusion queries from the shell.

    kql query "<sql>" --images a.jpg b.png --out results/    run a query, write its heatmaps
    kql explain "<sql>" [--images …]                         print the plan
    kql explain-dataset IMAGES --patch P [--engine ray …]    every image's heatmap, to Parquet
    kql demo [--out DIR …]                                   what ``make demo`` runs
    kql bench {cpu,gpu,approx} [options…]                    the benchmark harnesses

In a query, ``--images`` are the image set ``images`` (each named by its file stem; without
``--images`` the built-in ``photos`` set is there), and the model is ``--model NAME`` (the
built-in pretrained ``efficientnet_lite0``, the default) or ``--arch NAME --weights FILE``
(a torchvision architecture with a local state dict, loaded with ``weights_only=True``; its
name in queries is the architecture's; a segmentation architecture — ``lraspp_mobilenet_v3_large``,
``fcn_resnet50``, … — is explained by region scores). Both are also reachable as ``model``.
``--region NAME=MASK_FILE`` or ``--region NAME=Y0,X0,Y1,X1`` registers a region for
``region => 'NAME'``; the pictures outline it.

Exit status: 0 success; 2 a bad command line, query or input (the message, with a caret under
the offending part of the query, goes to stderr); 1 an unexpected internal error.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from krypton_ql.apps import results

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # demo and bench hand everything after their name to their own parsers
    split = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    passthrough: list[str] = []
    if split < len(argv) and argv[split] in ("demo", "bench"):
        keep = split + (2 if argv[split] == "bench" else 1)
        argv, passthrough = argv[:keep], argv[keep:]
    args = parser.parse_args(argv)
    if hasattr(args, "rest"):
        args.rest = passthrough
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="kql: %(name)s: %(message)s",
    )
    from compiler.errors import KryptonError

    try:
        return args.run(args)
    except BrokenPipeError:  # the reader went away (| head): stop quietly, like other tools
        _silence_stdout()
        return EXIT_OK
    except KryptonError as error:
        print(f"kql: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as error:
        print(f"kql: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kql: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's exit flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kql",
        description="Fast occlusion-based explanations of CNN predictions, as queries.",
        epilog="Exit status: 0 success, 2 bad command line/query/input, 1 internal error.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log planner decisions")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_query(commands)
    _add_explain(commands)
    _add_serve(commands)
    _add_explain_dataset(commands)
    _add_shell(commands)
    _add_demo(commands)
    _add_bench(commands)
    return parser


def _add_query(commands: Any) -> None:

    query = commands.add_parser("query", help="run a query and write its results")
    _query_arguments(query)
    query.add_argument("--out", default="kql-output", help="folder for .npy, .png and .csv")
    query.add_argument(
        "--compare-exact",
        action="store_true",
        help="also run the query without its approximation options and write exact-vs-"
        "approximate pictures with their SSIM",
    )
    _job_arguments(query)
    progress = query.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None)
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    query.set_defaults(run=_query)


def _add_explain(commands: Any) -> None:
    explain = commands.add_parser("explain", help="print the plan of a query")
    _query_arguments(explain)
    explain.add_argument("--verbose-plan", action="store_true", help="the plan after each stage")
    explain.add_argument(
        "--sql", dest="as_sql", action="store_true", help="also the incremental plan as SQL"
    )
    explain.add_argument(
        "--png",
        metavar="FILE",
        help="also draw the plan: each layer's update box in its feature map, and its FMAs",
    )
    explain.set_defaults(run=_explain)


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="an interactive occlusion explorer in the browser (a local web server)"
    )
    _session_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine)")
    serve.add_argument("--port", type=int, default=8000, help="default 8000 (0: any free port)")
    serve.add_argument(
        "--token", default=None, help="require this token (made for you off loopback)"
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=20, help="largest photo upload (default 20)"
    )
    serve.add_argument(
        "--sql-timeout", type=float, default=120, metavar="SECONDS",
        help="stop a SQL-box statement after this long (default 120)",
    )  # fmt: skip
    serve.set_defaults(run=_serve)


def _add_explain_dataset(commands: Any) -> None:
    job = commands.add_parser(
        "explain-dataset",
        help="explain every image of a folder, glob or listing; rows to Parquet",
    )
    job.add_argument("images", help="a folder, a glob, or a CSV/Parquet listing (path[, target])")
    job.add_argument(
        "--out", default="kql-dataset", help="the Parquet folder (default kql-dataset)"
    )
    job.add_argument("--model", default=None, help="efficientnet_lite0 (default)")
    job.add_argument("--arch", help="a torchvision architecture, with --weights")
    job.add_argument("--weights", help="a local state dict for --arch")
    job.add_argument("--patch", type=int, required=True, help="the patch size in pixels")
    job.add_argument("--stride", type=int, default=None, help="default: the patch size")
    job.add_argument("--score", choices=["prob", "logit"], default="prob")
    job.add_argument("--target", type=int, default=None, help="one class for every image")
    job.add_argument("--engine", choices=["local", "ray"], default="local")
    job.add_argument("--workers", type=int, default=None, help="Ray actors (default: CPUs)")
    job.add_argument("--gpus-per-worker", type=float, default=0)
    job.add_argument("--address", default=None, help="a Ray cluster (default: RAY_ADDRESS)")
    job.add_argument("--overwrite", action="store_true", help="start afresh, not resume")
    job.add_argument(
        "--overlays", action="store_true", help="also OUT/overlays/<name>.png per image"
    )
    bar = job.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    job.set_defaults(run=_explain_dataset)


def _add_shell(commands: Any) -> None:
    shell = commands.add_parser(
        "shell", help="an interactive SQL prompt (statements end with ';', .help for help)"
    )
    _session_arguments(shell)
    _job_arguments(shell)
    shell.set_defaults(run=_shell)


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="what `make demo` runs", add_help=False, usage="kql demo [demo options]"
    )
    demo.set_defaults(run=_demo, rest=[])


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="the benchmark harnesses (source checkout)",
        usage="kql bench {cpu,gpu,approx} [harness options] (kql bench NAME --help for them)",
    )
    bench.add_argument("harness", choices=["cpu", "gpu", "approx"])
    bench.set_defaults(run=_bench, rest=[])


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    """How the query's occlusion scans run: here (the default), or as dataset jobs."""
    group = parser.add_argument_group(
        "dataset jobs",
        "run each occlusion(…) scan as a dataset job whose rows DuckDB reads from Parquet",
    )
    group.add_argument(
        "--engine",
        choices=["local", "ray"],
        default=None,
        help="local: a job on this process; ray: on Ray actors (default: neither, in memory)",
    )
    group.add_argument("--workers", type=int, default=None, help="Ray actors (default: CPUs)")
    group.add_argument("--gpus-per-worker", type=float, default=0)
    group.add_argument("--address", default=None, help="a Ray cluster (default: RAY_ADDRESS)")
    group.add_argument(
        "--jobs",
        default=None,
        metavar="DIR",
        help="where the jobs keep their Parquet (reused by later runs; default: a temporary one)",
    )


def _job_options(args: argparse.Namespace) -> dict[str, Any]:
    """``Session.sql``'s dataset-job keywords from the command line."""
    options = {"workers": args.workers, "out": args.jobs, "address": args.address,
               "gpus_per_worker": args.gpus_per_worker}  # fmt: skip
    if args.engine is None and not any(options.values()):
        return {}
    return {"engine": args.engine, **options}  # Session.sql says which needs --engine


def _query_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sql", help='the query, e.g. "SELECT … FROM occlusion(images, model, …)"')
    _session_arguments(parser)


def _session_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        metavar="FILE",
        help="a DuckDB file that keeps created tables (default: in memory)",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="image files, NIfTI volumes (.nii, .nii.gz), .npy arrays ([C, *spatial]), or folders",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="efficientnet_lite0 (default), or FILE.pt2: any model saved with torch.export.save",
    )
    parser.add_argument("--arch", help="a torchvision architecture, with --weights")
    parser.add_argument("--weights", help="a local state dict for --arch")
    parser.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="NAME=MASK|Y0,X0,Y1,X1",
        help="a region for map-output (segmentation) models, used as region => 'NAME': a mask "
        "image in the model's input pixels (non-zero = inside) or a box; repeatable",
    )
    parser.add_argument(
        "--segments",
        action="append",
        default=[],
        metavar="NAME=LABELS",
        help="a label image (PNG, .npy or NIfTI of integers, the model input's size) used by "
        "every image as segments => 'NAME'; a segment scan can also cut each image itself "
        "(segments => 'slic', n_segments => 100); repeatable",
    )
    parser.add_argument(
        "--ssim",
        type=float,
        default=None,
        metavar="TARGET",
        help="an SSIM target in (0, 1) for every occlusion(…) scan that asks for no approximation "
        "itself: the planner runs the cheapest plan predicted to meet it, or exact (the built-in "
        "model's shipped profile serves it at patch 16, stride 4; else give --profile)",
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="a tuning profile (kql.tune(…).save) for SSIM targets"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse image files with more pixels (default 89,478,485, PIL's limit)",
    )


def _session(args: argparse.Namespace):
    """A session with the chosen model (also as ``model``) and ``--images`` as ``images``."""
    import krypton_ql as kql
    from compiler.errors import InvalidInputError
    from krypton_ql import models, options, photos, volumes

    if args.max_pixels is not None:
        if args.max_pixels < 1:
            raise InvalidInputError(f"--max-pixels must be positive, got {args.max_pixels}")
        photos.MAX_PIXELS = args.max_pixels
    session = kql.connect(args.database)
    if args.arch or args.weights:
        if not (args.arch and args.weights):
            raise InvalidInputError("--arch and --weights go together (no weights are downloaded)")
        if args.model:
            raise InvalidInputError("give --model or --arch/--weights, not both")
        module, size = models.torchvision_model(args.arch, args.weights)
        classes = models.architecture_classes(args.arch, module)
        name, transform = args.arch, models.imagenet_transform(size)
        display = models.imagenet_unnormalize
    elif args.model and args.model.endswith(".pt2"):  # any model, saved with torch.export
        module, transform, display = models.exported_model(args.model), None, models.rescale
        name, classes = "model", None
    else:
        name = args.model or "efficientnet_lite0"
        if name != "efficientnet_lite0":
            raise InvalidInputError(
                f"unknown model {name!r}: the built-in model is efficientnet_lite0; for a "
                "torchvision architecture give --arch NAME --weights FILE, for any other model "
                "a file saved with torch.export.save (--model FILE.pt2)"
            )
        module, transform, display = models.efficientnet_lite0(), models.preprocess, None
        classes = models.imagenet_classes()
    profile = kql.Profile.load(args.profile) if args.profile else None
    for alias in dict.fromkeys((name, "model")):
        session.register_model(alias, module, transform=transform, classes=classes, profile=profile)
    if args.ssim is not None:
        session.ssim = options.fraction("ssim", args.ssim)
    files: list[Path] = []
    for path in args.images or []:
        path = Path(path)
        if path.is_dir():
            files += sorted(photos.image_files(path) + volumes.volume_files(path))
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInputError(f"no such image file or folder: {path}")
    if args.images and not files:
        raise InvalidInputError("no image files among --images")
    if files:
        session.register_images("images", [str(f) for f in files])
    for text in args.region:
        name, region = _region(text)
        session.register_region(name, region)
    for text in args.segments:
        name, equals, path = text.partition("=")
        if not equals or not name.strip() or not path.strip():
            raise InvalidInputError(
                f"--segments {text!r}: write NAME=LABEL_FILE (then segments => 'NAME')"
            )
        if not Path(path).is_file():
            raise InvalidInputError(f"--segments {text!r}: no such file {path}")
        session.register_segments(name.strip(), path.strip())
    return session, module, display or models.unnormalize


def _region(text: str) -> tuple[str, Any]:
    """``NAME=Y0,X0,Y1,X1`` (a box) or ``NAME=FILE`` (a mask image)."""
    from compiler.errors import InvalidInputError

    name, equals, spec = text.partition("=")
    if not equals or not name.strip() or not spec.strip():
        raise InvalidInputError(
            f"--region {text!r}: write NAME=MASK_FILE or NAME=Y0,X0,Y1,X1 (then region => "
            "'NAME' in the query)"
        )
    parts = spec.split(",")
    if len(parts) == 4 and all(p.strip().lstrip("-").isdigit() for p in parts):
        return name.strip(), tuple(int(p) for p in parts)
    if len(parts) > 1:
        raise InvalidInputError(f"--region {text!r}: a box is four integers Y0,X0,Y1,X1")
    return name.strip(), spec


def _query(args: argparse.Namespace) -> int:
    from compiler.errors import InvalidInputError
    from krypton_ql.dsl.outline import describe

    outline = describe(args.sql)  # what the statement computes, as the query language binds it
    if args.compare_exact and not outline.approximate:
        raise InvalidInputError("--compare-exact needs a query with approximation options")
    out = Path(args.out)
    staging = results.staging(out)  # checked before the query runs, not after
    try:
        session, module, display = _session(args)
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        jobs = _job_options(args)
        exact = None
        if args.compare_exact:
            exact = session.sql(args.sql, progress=progress, exact=True, **jobs)
        result = session.sql(args.sql, progress=progress, **jobs)  # last: the plan of record
        written, rows = results.write_results(
            session, module, display, result, outline, staging, exact
        )
        with open(staging / "results.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(result.columns)
            writer.writerows(rows)
        written.append(staging / "results.csv")
        written.append(result.to_parquet(staging / "results.parquet"))
        results.publish(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(result)
    print(f"wrote {len(written)} files to {out}/ ({session.last_queries} occlusion queries)")
    return EXIT_OK


def _explain_dataset(args: argparse.Namespace) -> int:
    """``kql explain-dataset``: the dataset job, then a summary of what it wrote."""
    from compiler.errors import InvalidInputError
    from krypton_ql.integrations import datasets

    if args.arch or args.weights:
        if not (args.arch and args.weights):
            raise InvalidInputError("--arch and --weights go together (no weights are downloaded)")
        if args.model:
            raise InvalidInputError("give --model or --arch/--weights, not both")
        model: Any = (args.arch, args.weights)
    else:
        model = args.model or "efficientnet_lite0"
    out = datasets.explain_dataset(
        args.images, model, patch=args.patch, stride=args.stride or args.patch, out=args.out,
        score=args.score, target=args.target, engine=args.engine, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, address=args.address, overwrite=args.overwrite,
        overlays=args.overlays,
        progress="auto" if args.progress is None else args.progress,
    )  # fmt: skip
    table = datasets.read(out, columns=["error"])  # the job's parts, not the overlays
    failed = table.num_rows - table.column("error").null_count
    print(f"{table.num_rows} images in {out}/ ({failed} with errors; the error column says why)")
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    from compiler.errors import InvalidInputError

    session, _module, _display = _session(args)
    text = args.sql if args.sql.lstrip().upper().startswith("EXPLAIN") else f"EXPLAIN {args.sql}"
    if args.verbose_plan:
        text = text.replace("EXPLAIN", "EXPLAIN VERBOSE", 1)
    print(session.explain(text, sql=args.as_sql), end="")
    if args.png:
        if session.last_plan is None:
            raise InvalidInputError("--png: the statement has no occlusion(…) call to draw")
        path = session.last_plan.explain_png(args.png)
        print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from compiler.errors import InvalidInputError
    from krypton_ql.apps.serve import serve
    from krypton_ql.apps.serve.explorer import Explorer

    if args.max_upload_mb <= 0:
        raise InvalidInputError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if not args.sql_timeout > 0:
        raise InvalidInputError(f"--sql-timeout must be positive, got {args.sql_timeout}")
    session, _module, display = _session(args)
    name = args.arch or args.model or "efficientnet_lite0"
    images = "images" if args.images else "photos"
    explorer = Explorer(session, images, display, [name], int(args.max_upload_mb * 2**20),
                        sql_seconds=args.sql_timeout)  # fmt: skip
    serve(explorer, args.host, args.port, args.token)
    return EXIT_OK


def _shell(args: argparse.Namespace) -> int:
    from krypton_ql.apps.shell import Shell

    session, module, display = _session(args)

    def save(result: Any, sql: str, out: Path) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        return results.write_results(session, module, display, result, session.outline(sql), out)[0]

    import os

    history = Path(os.environ.get("KQL_HISTORY", Path.home() / ".kql_history"))
    return Shell(session, save, history=history, options=_job_options(args)).run()


def _demo(args: argparse.Namespace) -> int:
    from krypton_ql.apps import demo

    return demo.main(args.rest)


def _bench(args: argparse.Namespace) -> int:
    import importlib

    from compiler.errors import InvalidInputError

    module = {"cpu": "benchmarks.cpu_exact", "gpu": "benchmarks.gpu", "approx": "benchmarks.approx"}
    if (Path.cwd() / "benchmarks").is_dir() and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # the checkout the command runs in
    try:
        harness = importlib.import_module(module[args.harness])
    except ImportError:
        raise InvalidInputError(
            "kql bench runs the harnesses in benchmarks/ of a krypton-ql source checkout; run it "
            "from the repository root"
        ) from None
    harness.main(args.rest)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
