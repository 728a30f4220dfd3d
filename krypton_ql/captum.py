"""The Captum drop-in's documented import path: ``from krypton_ql.captum import Occlusion``
(it lives in ``krypton_ql.integrations.captum``)."""

from krypton_ql.integrations.captum import (
    CaptumAssertionError,
    CaptumIndexError,
    KryptonError,
    Occlusion,
)

__all__ = ["CaptumAssertionError", "CaptumIndexError", "KryptonError", "Occlusion"]
