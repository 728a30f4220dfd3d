"""``kql.connect()``: a Session with a catalog of models and image sets, running queries.

A new session knows the built-in pretrained model as ``efficientnet_lite0`` and the sample
photos as ``photos`` (chelsea, coffee, astronaut, rocket), so a first query needs no set-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import krypton_ql.api as api
from compiler.errors import InvalidInputError
from krypton_ql.dsl.bind import Occlusion, bind, position_mask
from krypton_ql.dsl.errors import QueryError
from krypton_ql.dsl.parse import Statement, fail, parse
from krypton_ql.dsl.relation import run_relation
from krypton_ql.dsl.result import Result

Transform = Callable[[Any], Tensor]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class _Model:
    module: nn.Module | None
    transform: Transform | None
    classes: Sequence[str] | None
    loader: Callable[[], nn.Module] | None = None
    profile: Any = None  # a krypton_ql.Profile that ssim => … queries read

    def get(self) -> nn.Module:
        if self.module is None:
            assert self.loader is not None
            self.module = self.loader()
        return self.module


@dataclass
class _Images:
    """Named images: tensors in model input space, or raw photos the model's transform reads."""

    items: dict[str, Any] = field(default_factory=dict)
    raw: bool = False


class Session:
    """A catalog of models and images and the queries that run on them."""

    def __init__(self) -> None:
        from krypton_ql import models

        self._models: dict[str, _Model] = {}
        self._images: dict[str, _Images] = {}
        self._models["efficientnet_lite0"] = _Model(
            None, models.preprocess, models.imagenet_classes(), loader=models.efficientnet_lite0
        )
        photos = {name: (lambda n=name: models.sample_photo(n)) for name in models.SAMPLE_PHOTOS}
        self._images["photos"] = _Images(photos, raw=True)
        self.last_queries = 0  # occlusion queries the last statement executed
        self.last_plan: Any = None  # the plan of the last statement
        self._last_inputs: dict[str, Tensor] = {}
        self._plans: dict[tuple[Any, ...], api.OcclusionPlan] = {}  # compiled plans, reused

    # -- catalog ------------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        module: nn.Module,
        *,
        transform: Transform | None = None,
        classes: Sequence[str] | None = None,
        profile: Any = None,
    ) -> None:
        """Make ``module`` available to queries as ``name``; ``transform`` turns raw photos
        (image files) into its input; ``profile`` (from ``kql.tune``) serves ``ssim => …``."""
        if not isinstance(module, nn.Module):
            raise InvalidInputError(f"register_model needs an nn.Module, got {type(module)}")
        self._models[name] = _Model(module.eval(), transform, classes, profile=profile)
        self._plans.clear()  # a plan binds the module it was compiled for

    def tune(self, model: str, images: str, **options: Any) -> Any:
        """``kql.tune`` the registered ``model`` on the image set ``images`` (same options:
        ``ssim``, ``patch``, ``stride``, ``drilldown``, …) and keep the profile for its
        ``ssim => …`` queries. Returns the profile."""
        from krypton_ql.approx import tune

        if model not in self._models:
            raise InvalidInputError(f"unknown model {model!r} (models: {', '.join(self._models)})")
        if images not in self._images:
            raise InvalidInputError(f"unknown images {images!r}")
        entry, catalog = self._models[model], self._images[images]
        context: Any = SimpleNamespace(text=f"tune({model!r}, {images!r})")
        sample = torch.stack([self._image(catalog, name, entry, context) for name in catalog.items])
        entry.profile = tune(entry.get(), sample, **options)
        self._plans.clear()
        return entry.profile

    def register_images(self, name: str, images: Any) -> list[str]:
        """Register a tensor ``[N,C,H,W]`` or a list of tensors (named by index), or image files
        or a folder of them (named by file stem). Returns the image names."""
        if isinstance(images, Tensor):
            if images.dim() != 4:
                raise InvalidInputError("an image tensor must have shape [N, C, H, W]")
            self._images[name] = _Images({str(i): images[i] for i in range(len(images))})
        elif isinstance(images, (str, Path)) and Path(images).is_dir():
            files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InvalidInputError(f"no image files in {images}")
            self._images[name] = _Images({p.stem: _photo_loader(p) for p in files}, raw=True)
        elif (
            isinstance(images, (list, tuple))
            and images
            and all(isinstance(i, Tensor) for i in images)
        ):
            self._images[name] = _Images({str(i): t for i, t in enumerate(images)})
        elif isinstance(images, (list, tuple, str, Path)):
            paths = [Path(p) for p in ([images] if isinstance(images, (str, Path)) else images)]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing or not paths:
                raise InvalidInputError(f"no such image files: {missing or paths}")
            self._images[name] = _Images({p.stem: _photo_loader(p) for p in paths}, raw=True)
        else:
            raise InvalidInputError(
                "register_images takes a tensor [N,C,H,W], a list of tensors, image files or a "
                "folder"
            )
        return list(self._images[name].items)

    # -- queries ------------------------------------------------------------------------------

    def sql(self, query: str, *, progress: Any = "auto") -> Result:
        """Run a query (or ``EXPLAIN [VERBOSE]`` one) and return its result. ``progress``:
        a bar on stderr (``True``; ``"auto"``: when it is a terminal), a ``callback(done,
        total)``, or ``False``."""
        statement = parse(query)
        occlusion = bind(statement)
        model = self._model(occlusion, statement)
        names, images = self._load_images(occlusion, statement, model)
        plan = self._compile(occlusion, statement, model.get(), images)
        self.last_plan = plan
        self._last_inputs = dict(zip(names, images))
        _check_classes(occlusion, statement, plan)
        grid_columns = _grid(plan)
        mask = position_mask(occlusion, grid_columns, statement.text)
        pushdown = _describe_pushdown(
            occlusion, mask, names, len(self._images[occlusion.images].items)
        )
        explanation = pushdown + "\n" + plan.explain(verbose=statement.verbose)
        if statement.explain:
            return Result(["plan"], [(explanation,)], explanation)
        columns = self._relation(plan, occlusion, names, images, mask, grid_columns, progress)
        out_names, rows = run_relation(statement.select, columns, plan.grid, statement.text)
        return Result(out_names, rows, explanation)

    def input_image(self, name: str) -> Tensor | None:
        """The model input the last statement computed for image ``name`` (None if none)."""
        return self._last_inputs.get(name)

    def explain(self, query: str) -> str:
        """The plan of a query, pushdowns first."""
        text = query if _is_explain(query) else f"EXPLAIN {query}"
        return str(self.sql(text).rows[0][0])

    def _model(self, occlusion: Occlusion, statement: Statement) -> _Model:
        if occlusion.model not in self._models:
            known = ", ".join(sorted(self._models))
            raise _argument_error(
                statement, 1, f"unknown model '{occlusion.model}' (models: {known})"
            )
        return self._models[occlusion.model]

    def _load_images(
        self, occlusion: Occlusion, statement: Statement, model: _Model
    ) -> tuple[list[str], Tensor]:
        if occlusion.images not in self._images:
            known = ", ".join(sorted(self._images))
            raise _argument_error(
                statement, 0, f"unknown images '{occlusion.images}' (image sets: {known})"
            )
        catalog = self._images[occlusion.images]
        names = list(catalog.items)
        if occlusion.image_names is not None:
            missing = [n for n in occlusion.image_names if n not in catalog.items]
            if missing:
                raise QueryError(
                    f"unknown image {missing[0]!r} in '{occlusion.images}' "
                    f"(images: {', '.join(names)})",
                    statement.text,
                    _find(statement.text, missing[0]),
                )
            names = [n for n in names if n in occlusion.image_names]
        tensors = [self._image(catalog, name, model, statement) for name in names]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise QueryError(
                f"the images of '{occlusion.images}' differ in shape: {sorted(shapes)}",
                statement.text,
                0,
            )
        return names, torch.stack(tensors) if tensors else torch.empty(0)

    def _image(self, catalog: _Images, name: str, model: _Model, statement: Statement) -> Tensor:
        item = catalog.items[name]
        if not catalog.raw:
            return item
        if model.transform is None:
            raise QueryError(
                "this model has no transform for image files; register it with transform=…",
                statement.text,
                0,
            )
        try:
            photo = item() if callable(item) else item
            image = model.transform(photo)
        except Exception as error:  # user code or an unreadable file
            raise QueryError(
                f"image {name!r} could not be loaded and transformed: {error}", statement.text, 0
            ) from error
        if not isinstance(image, Tensor):
            raise QueryError(
                f"the model's transform returned {type(image).__name__}, not a tensor",
                statement.text,
                0,
            )
        return image

    def _compile(
        self, occlusion: Occlusion, statement: Statement, module: nn.Module, images: Tensor
    ) -> api.OcclusionPlan:
        options = dict(occlusion.options)
        backend = options.get("backend", "auto")
        if backend not in ("auto", "torch", "triton"):
            node = occlusion.option_nodes["backend"]
            raise _node_error(
                statement,
                node,
                f"backend '{backend}' is not available (available: auto, torch, triton)",
            )
        if "patch" not in options:
            raise _node_error(statement, _function(statement), "occlusion() needs patch => size")
        if len(images) == 0:
            raise QueryError("no images match the query", statement.text, 0)
        options.pop("target", None)
        if "ssim" in options:
            profile = self._models[occlusion.model].profile
            if profile is None:
                raise _node_error(
                    statement,
                    occlusion.option_nodes["ssim"],
                    f"ssim needs a tuning profile for model '{occlusion.model}': run "
                    f"session.tune('{occlusion.model}', '<images>', ssim=…) or register the "
                    "model with profile=kql.tune(…)",
                )
            options["profile"] = profile
        key = (
            id(module),
            tuple(images.shape[1:]),
            tuple(sorted((k, id(v) if k == "profile" else v) for k, v in options.items())),
        )
        if key in self._plans:
            return self._plans[key]
        try:
            plan = api.compile(module, tuple(images.shape[1:]), **options)
        except InvalidInputError as error:
            name = _option_named(str(error), occlusion)
            node = occlusion.option_nodes.get(name) if name else None
            if node is None:
                raise QueryError(str(error), statement.text, 0) from None
            raise _node_error(statement, node, str(error)) from None
        self._plans[key] = plan
        return plan

    def _relation(
        self,
        plan: api.OcclusionPlan,
        occlusion: Occlusion,
        names: list[str],
        images: Tensor,
        mask: np.ndarray,
        grid: dict[str, np.ndarray],
        progress: Any = False,
    ) -> dict[str, np.ndarray]:
        positions = torch.as_tensor(np.nonzero(mask)[0], dtype=torch.int64)
        targets = None
        classes = occlusion.classes
        if classes is None and "target" in occlusion.options:
            classes = [occlusion.options["target"]]
        if classes is not None:
            targets = torch.tensor([classes] * len(names), dtype=torch.int64).reshape(
                len(names), -1
            )
        result = plan.evaluate(images, targets=targets, positions=positions, progress=progress)
        self.last_queries = result.queries
        count, kinds = len(names), result.targets.shape[1]
        index = positions.numpy()
        scores = result.heatmaps.reshape(count, kinds, -1)[:, :, index].double().numpy()
        shape = (count, kinds, len(index))
        base = np.broadcast_to(result.base.double().numpy()[:, :, None], shape)
        labels = self._models[occlusion.model].classes
        targets_array = result.targets.cpu().numpy()
        named = np.array(
            [[labels[c] if labels is not None and 0 <= c < len(labels) else str(c) for c in row]
             for row in targets_array.tolist()],
            dtype=object,
        )  # fmt: skip
        column = {
            "image": np.broadcast_to(np.array(names, dtype=object)[:, None, None], shape),
            "class": np.broadcast_to(targets_array[:, :, None], shape),
            "label": np.broadcast_to(named[:, :, None], shape),
            "prob": scores,
            "base_prob": base,
            "drop": base - scores,
        }
        for name in ("row", "col", "y", "x"):
            column[name] = np.broadcast_to(grid[name][index][None, None, :], shape)
        return {name: np.ascontiguousarray(values).reshape(-1) for name, values in column.items()}


def _grid(plan: api.OcclusionPlan) -> dict[str, np.ndarray]:
    rows, cols = plan.grid
    row, col = np.divmod(np.arange(rows * cols), cols)
    return {"row": row, "col": col, "y": plan.positions.top, "x": plan.positions.left}


def _describe_pushdown(
    occlusion: Occlusion, mask: np.ndarray, names: list[str], registered: int
) -> str:
    filters = " AND ".join(p.sql() for p in occlusion.position_filters) or "none"
    classes = (
        occlusion.classes
        if occlusion.classes is not None
        else ([occlusion.options["target"]] if "target" in occlusion.options else "predicted")
    )
    return (
        "== pushdown ==\n"
        f"positions: {int(mask.sum())} of {len(mask)} (filters: {filters})\n"
        f"classes: {classes}\n"
        f"images: {len(names)} of {registered} ({', '.join(names)})\n"
    )


def _photo_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from PIL import Image

        with Image.open(path) as image:
            return np.array(image.convert("RGB"))  # a writable copy

    return load


def _is_explain(query: str) -> bool:
    return query.lstrip().lower().startswith("explain")


def _find(text: str, word: str) -> int:
    index = text.lower().find(word.lower())
    return max(index, 0)


def _argument_error(statement: Statement, index: int, message: str) -> QueryError:
    return fail(message, _function(statement).expressions[index], statement.text)


def _node_error(statement: Statement, node: Any, message: str) -> QueryError:
    return fail(message, node, statement.text)


def _option_named(message: str, occlusion: Occlusion) -> str | None:
    """The option an argument check complains about (its messages start with the name)."""
    return next((name for name in occlusion.option_nodes if message.startswith(name)), None)


def _function(statement: Statement) -> Any:
    select = statement.select
    source = select.args.get("from_") or select.args.get("from")
    return source.this.this


def _check_classes(occlusion: Occlusion, statement: Statement, plan: api.OcclusionPlan) -> None:
    """Classes named by the query exist in the model's output."""
    count = plan.logical[plan.logical.output].schema.shape[0]
    named = occlusion.classes or []
    nodes = occlusion.class_nodes
    if occlusion.classes is None and "target" in occlusion.options:
        named, nodes = [occlusion.options["target"]], [occlusion.option_nodes["target"]]
    for value in named:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
            raise _node_error(
                statement,
                nodes[0] if nodes else _function(statement),
                f"class {value!r} is outside the model's {count} classes",
            )


def connect() -> Session:
    """A new session that knows the built-in model and sample photos."""
    return Session()
