"""Occlusion explanations of whole datasets: ``explain_dataset`` streams image files through one
compiled plan per image shape and writes one Parquet row per image, on this process
(``engine="local"``) or on a Ray cluster (``engine="ray"``: Ray Data's ``map_batches`` over an
actor pool, each actor building the model and its plans once).

    kql.explain_dataset("val/", "efficientnet_lite0", patch=16, stride=8, out="results/")

Output: the job's Parquet part files in ``out`` (``read(out)`` gives them as one Arrow table;
``duckdb.sql("SELECT … FROM 'results/part-*.parquet'")`` reads them too), one row per image,
columns ``SCHEMA``: ``image_id`` (the path as listed), ``path``, ``target`` and ``label`` (the
class explained: the listing's ``target`` column, else the ``target=`` option, else the
prediction), ``score`` (its clean probability, or logit with ``score="logit"``), ``heatmap``
(the row-major ``float32`` cells) with ``heatmap_shape`` ``[rows, cols]``, ``queries``
(occlusion queries run), ``seconds`` (this image's compute time), ``error`` (null, or why the
image has no heatmap: it could not be decoded, did not fit the model, or raised a
``KryptonError``; the job goes on) and ``source`` (what the row was computed from: a digest of
the file's path, size and modification time and the class asked for).

The folder is one job's (``folder``): its record holds a digest of the model's
weights and the options, and a job with others refuses to write there (``overwrite=True``
replaces that job's files; nothing else in the folder is touched); one process writes at a
time. Re-running the same job resumes: images whose row is there and whose ``source`` still
matches are skipped, images that failed or whose file or class changed are explained again.
(Rows of a Ray dataset, which has no files to look at, are matched by ``image_id`` alone.)

Both engines run the same ``Explainer`` on each image, so their heatmaps are identical. Ray is
an optional extra (``pip install krypton-ql[ray]``); the local engine never imports it.
"""

from krypton_ql.integrations.datasets.engines import PART_ROWS, run_job
from krypton_ql.integrations.datasets.job import OVERLAYS, explain_dataset, overlay_name, read
from krypton_ql.integrations.datasets.listing import listing
from krypton_ql.integrations.datasets.workers import (
    SCHEMA,
    Explainer,
    ModelSpec,
    Worker,
    model_spec,
)

__all__ = [
    "OVERLAYS", "PART_ROWS", "SCHEMA", "Explainer", "ModelSpec", "Worker", "explain_dataset",
    "listing", "model_spec", "overlay_name", "read", "run_job",
]  # fmt: skip
