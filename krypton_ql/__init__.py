"""krypton-ql: fast, exact occlusion-based explanations of CNN predictions, compiled as
incremental queries.

>>> import krypton_ql as kql
>>> sorted(n for n in kql.__all__ if not n[0].isupper())[:4]
['compile', 'connect', 'explain', 'explain_dataset']
"""

from krypton_ql import models, quality
from krypton_ql.api import OcclusionPlan, OcclusionResult, compile, explain, occlusion_heatmap
from krypton_ql.approx import DrillDownPlan
from krypton_ql.datasets import explain_dataset
from krypton_ql.dsl.errors import QueryError
from krypton_ql.dsl.result import Result
from krypton_ql.dsl.session import Session, connect
from krypton_ql.errors import InvalidInputError, KryptonError, UnsupportedOperationError
from krypton_ql.naive import naive_heatmap
from krypton_ql.plans import HeatmapPlan
from krypton_ql.profile import Profile
from krypton_ql.tuning import tune, tuning_images

__all__ = [
    "InvalidInputError",
    "KryptonError",
    "DrillDownPlan",
    "HeatmapPlan",
    "OcclusionPlan",
    "Profile",
    "OcclusionResult",
    "QueryError",
    "Result",
    "Session",
    "UnsupportedOperationError",
    "compile",
    "connect",
    "explain",
    "explain_dataset",
    "models",
    "naive_heatmap",
    "occlusion_heatmap",
    "quality",
    "tune",
    "tuning_images",
]
