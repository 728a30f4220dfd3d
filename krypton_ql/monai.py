"""The MONAI drop-in's documented import path: ``from krypton_ql.monai import
OcclusionSensitivity`` (it lives in ``krypton_ql.integrations.monai``; needs the ``[monai]``
extra)."""

from krypton_ql.integrations.monai import OcclusionSensitivity

__all__ = ["OcclusionSensitivity"]
