"""The Captum drop-ins' documented import path: ``from krypton_ql.captum import Occlusion``,
``FeatureAblation`` (they live in ``krypton_ql.integrations.captum``)."""

from krypton_ql.integrations.captum import (
    CaptumAssertionError,
    CaptumIndexError,
    CaptumRuntimeError,
    FeatureAblation,
    KryptonError,
    Occlusion,
)

__all__ = [
    "CaptumAssertionError",
    "CaptumIndexError",
    "CaptumRuntimeError",
    "FeatureAblation",
    "KryptonError",
    "Occlusion",
]
