"""krypton-ql: fast, exact occlusion-based explanations of CNN predictions, compiled as
incremental queries.

Where things live: ``api`` (the functions below), ``options`` (every option, validated once),
``plans/`` (how a heatmap is computed), ``quality/`` (how close approximation comes),
``dsl/`` (the query language), ``integrations/`` (Captum, segmentation, datasets and Ray),
``apps/`` (the ``kql`` command, its shell, the demo, the explorer), ``models/`` (the built-in
model), and beside them ``photos`` (decoding), ``volumes`` (NIfTI and ``.npy`` arrays),
``segments`` (superpixels for ``ablation_scores``), ``render`` (pictures), ``progress``,
``fingerprint`` (cache keys) and ``errors``.

>>> import krypton_ql as kql
>>> sorted(n for n in kql.__all__ if not n[0].isupper())[:4]
['ablation_scores', 'compile', 'connect', 'datasets']
"""

from krypton_ql import models, quality, segments
from krypton_ql.api import ablation_scores, compile, explain, naive_heatmap, occlusion_heatmap
from krypton_ql.dsl.errors import QueryError
from krypton_ql.dsl.result import Result
from krypton_ql.dsl.session import Session, connect
from krypton_ql.errors import InvalidInputError, KryptonError, UnsupportedOperationError
from krypton_ql.integrations import datasets
from krypton_ql.integrations.datasets import explain_dataset
from krypton_ql.plans import DrillDownPlan, HeatmapPlan, OcclusionPlan, OcclusionResult
from krypton_ql.plans.cache import PLANS as plan_cache
from krypton_ql.plans.tuning import tune, tuning_images
from krypton_ql.quality import Profile
from runtime.fill import Fill

__all__ = [
    "InvalidInputError",
    "KryptonError",
    "DrillDownPlan",
    "Fill",
    "HeatmapPlan",
    "OcclusionPlan",
    "Profile",
    "OcclusionResult",
    "QueryError",
    "Result",
    "Session",
    "UnsupportedOperationError",
    "ablation_scores",
    "compile",
    "connect",
    "datasets",
    "explain",
    "explain_dataset",
    "models",
    "naive_heatmap",
    "occlusion_heatmap",
    "plan_cache",
    "quality",
    "segments",
    "tune",
    "tuning_images",
]
