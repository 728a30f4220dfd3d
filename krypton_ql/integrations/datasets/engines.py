"""Where a dataset job's workers run: on this process (``engine="local"``: a thread decodes the
next item while this one is processed) or on Ray Data (``engine="ray"``: an actor pool of
workers, each rebuilt from its pickle; the driver hands their rows to the sink)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pyarrow as pa

from compiler.errors import InvalidInputError
from krypton_ql.integrations.datasets.workers import Worker
from krypton_ql.progress import progress_callback

PART_ROWS = 64  # rows per Parquet file the local engine writes (a crash loses at most these)


def run_job(
    worker: Worker,
    items: list[dict[str, Any]] | Any,
    sink: Callable[[pa.Table], None],
    *,
    engine: str = "local",
    workers: int | None = None,
    gpus_per_worker: float = 0,
    batch_size: int | None = None,
    address: str | None = None,
    progress: Any = "auto",
    skip: set[str] | None = None,
) -> None:
    """Run ``worker`` over ``items`` (dicts; with Ray also a ``ray.data.Dataset``, whose rows
    named in ``skip`` by the worker's key are left out) and hand its rows to ``sink`` in
    tables of whole items, about ``PART_ROWS`` items each."""
    if engine == "local":
        _run_local(worker, items, sink, progress)
    elif engine == "ray":
        _run_ray(worker, items, sink, workers, gpus_per_worker, batch_size, address, progress,
                 skip or set())  # fmt: skip
    else:
        raise InvalidInputError(f"engine must be 'local' or 'ray', got {engine!r}")


def _run_local(
    worker: Worker, items: list[dict[str, Any]], sink: Callable[[pa.Table], None], progress: Any
) -> None:
    """Decode on a thread, process on this one, hand over every ``PART_ROWS`` items."""
    with progress_callback(progress, len(items), "images") as report:
        pending: list[pa.Table] = []
        with ThreadPoolExecutor(1, thread_name_prefix="kql-decode") as decoder:
            for count, (item, loaded) in enumerate(_prefetch(decoder, worker, items), start=1):
                pending.append(worker.process(item, loaded))
                if len(pending) >= PART_ROWS:
                    sink(pa.concat_tables(pending))
                    pending = []
                if report is not None:
                    report(count, len(items))
        if pending:
            sink(pa.concat_tables(pending))


def _prefetch(
    decoder: ThreadPoolExecutor, worker: Worker, items: list[dict[str, Any]]
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Each item with its loaded input, the next one loading while this one is processed."""
    worker.setup()  # build the model here, not on the decoding thread
    pending = [decoder.submit(worker.load, items[0])] if items else []
    for index, item in enumerate(items):
        if index + 1 < len(items):
            pending.append(decoder.submit(worker.load, items[index + 1]))
        yield item, pending.pop(0).result()


def _is_ray_dataset(images: Any) -> bool:
    return type(images).__module__.startswith("ray.data")


class _Actor:
    """Ray Data's callable class: one worker, rebuilt from its pickle on each actor."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.worker(batch)


def _run_ray(
    worker: Worker,
    items: Any,
    sink: Callable[[pa.Table], None],
    workers: int | None,
    gpus: float,
    batch_size: int | None,
    address: str | None,
    progress: Any,
    skip: set[str],
) -> None:
    """Ray Data: the items (or the user's dataset) → ``map_batches`` on an actor pool that Ray
    restarts when an actor dies (its batches are redone) → the driver hands whole output
    blocks to ``sink`` (so ``out`` is the driver's folder)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise InvalidInputError(
            "engine='ray' needs Ray: pip install 'krypton-ql[ray]'"
        ) from None  # fmt: skip
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    # The job reports its own progress (``progress``); Ray Data's bars, or its log lines every
    # ten seconds when stdout is not a terminal, would repeat it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if isinstance(items, list):
        dataset, total = ray.data.from_items(items), len(items)
    else:
        dataset = items
        if skip:
            dataset = dataset.filter(lambda row: worker.name(row) not in skip)
        total = dataset.count()
    cpus = int(ray.available_resources().get("CPU", 1))
    # A user's dataset is read by Ray tasks of one CPU each while the actors run: the actors
    # leave one CPU to them (all of them taken, the read would wait forever).
    free = cpus if isinstance(items, list) else max(1, cpus - 1)
    size = workers or free
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    share = min(free / size, largest)  # an actor's share, on one node (a fraction: shared)
    worker.threads = max(1, int(share))
    results = dataset.map_batches(
        _Actor,
        fn_constructor_args=(worker,),
        compute=ray.data.ActorPoolStrategy(size=size),
        batch_size=batch_size or 1,
        batch_format="pyarrow",
        num_gpus=gpus,
        num_cpus=share,
    )  # Ray Data's actor pools restart dead actors and retry their batches by default
    with progress_callback(progress, total, "images") as report:
        pending: list[pa.Table] = []
        count = 0
        for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
            block = cast(pa.Table, batch)
            pending.append(block)
            count += len(set(block.column(worker.key).to_pylist()))
            if sum(len(set(t.column(worker.key).to_pylist())) for t in pending) >= PART_ROWS:
                sink(pa.concat_tables(pending))
                pending = []
            if report is not None:
                report(min(count, total), total)
        if pending:
            sink(pa.concat_tables(pending))
