"""What the CPU benchmarks share: the models and photos they time, and how they record a run."""

from __future__ import annotations

import json
import platform
from typing import Any

import torch
import torchvision

from krypton_ql import models


def model(name: str) -> torch.nn.Module:
    """The pretrained built-in model, or a torchvision architecture with seeded random weights."""
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        return models.efficientnet_lite0()
    return getattr(torchvision.models, name)().eval()


def photo(name: str, picture: str) -> torch.Tensor:
    """A scikit-image photo ``[3, 224, 224]`` as ``name``'s input."""
    if name == "efficientnet_lite0":
        return models.preprocess(models.sample_photo(picture))
    return models.imagenet_transform(224)(models.sample_photo(picture))


def write_json(path: str, key: str, rows: Any) -> None:
    """The run's figures with the machine, torch's threads and version."""
    meta = {"machine": platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}  # fmt: skip
    with open(path, "w") as handle:
        json.dump({"meta": meta, key: rows}, handle, indent=2)
