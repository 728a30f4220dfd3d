"""The Python API: compile an occlusion workload into a plan, run it, explain it.

This module strings the stages together (export → import → optimize → lower → execute) and
validates user input; it holds no logic of its own.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compiler import explain as explain_text
from compiler.boxes import Positions
from compiler.cost import PlanCost, plan_cost
from compiler.drilldown import DrillDownMode
from compiler.errors import InvalidInputError
from compiler.importer import export, import_model
from compiler.lower import lower
from compiler.pipeline import optimize
from compiler.types import Size2
from krypton_ql import options as check
from krypton_ql import segmentation
from krypton_ql.approx import DrillDownPlan
from krypton_ql.options import Options
from krypton_ql.plans import HeatmapPlan, OcclusionResult, ProgressArg
from krypton_ql.progress import progress_callback
from runtime import memory
from runtime.backends import runner_for
from runtime.executor import Executor, materialize, select_scores
from runtime.memory import default_budget
from runtime.resolve import Backend, resolve
from runtime.weights import Weights

log = logging.getLogger(__name__)


class OcclusionPlan(HeatmapPlan):
    """A compiled occlusion workload for images of one shape. Build it with ``compile``."""

    def __init__(self, model: nn.Module, options: Options):
        """``options`` of one stage (no drill-down)."""
        check.model(model)
        if options.drilldown is not None:
            raise InvalidInputError("an OcclusionPlan runs one stage; kql.compile plans both")
        self.options = options
        self.dtype = options.precision
        self._clean: tuple[Tensor, dict[str, Tensor]] | None = None
        self.clean_forwards_reused = 0  # evaluate(reuse_clean=True) calls that ran no forward
        model = check.in_precision(model, self.dtype)
        self.model, self.shape, self.target = model, options.shape, options.target
        self.occlusion = options.occlusion
        device = _device(model)
        self.backend = resolve(options.backend, device.type)
        self.runner = runner_for(self.backend, options.conv)
        compile_options = options.compile_options(default_budget(device))
        self.exported = export(model, self.shape)
        self.logical = import_model(
            self.exported, self.shape, self.occlusion.patch, self.occlusion.color
        )
        check.scored_classes(self.classes, self.occlusion.score)
        image = Size2(self.shape[1], self.shape[2])
        self.positions = Positions.grid(image, self.occlusion.patch, self.occlusion.stride)
        self.optimized = optimize(self.logical, compile_options, self.positions)
        self.physical = lower(self.optimized.plan)
        if self.backend is Backend.TRITON:  # what the kernels address and a GPU launches
            from runtime.kernels import limits

            limits.check(self.physical, cuda=device.type == "cuda")
        centre = Positions.centre(image, self.occlusion.patch)
        self.centre_cost: PlanCost = plan_cost(
            self.logical, optimize(self.logical, compile_options, centre).plan
        )
        batching = self.physical.batching
        log.info(
            "compiled %s: %d nodes → %d steps (%d element-wise fused), %d queries in batches "
            "of %d, theoretical speedup %.2f×, backend %s%s",
            type(model).__name__,
            len(self.logical),
            len(self.physical.steps),
            sum(len(step.epilogue) for step in self.physical.steps),
            batching.queries,
            batching.batch_size,
            self.theoretical_speedup,
            self.runner.describe(),
            f", τ = {options.tau:g} (≈)" if options.tau < 1 else "",
        )

    @property
    def theoretical_speedup(self) -> float:
        """FMA ratio of full re-inference to the incremental plan, patch at the image centre."""
        return self.centre_cost.speedup

    @property
    def classes(self) -> int:
        return self.logical[self.logical.output].schema.shape[0]

    def explain(self, verbose: bool = False, sql: bool = False) -> str:
        """The plan as text: logical, rewritten (rules that fired) and physical sections."""
        return explain_text.render(
            self.logical,
            self.optimized,
            self.physical,
            self.centre_cost,
            self.grid,
            verbose=verbose,
            sql=sql,
            backend=self.runner.describe(),
            choices={name: choice.value for name, choice in self.runner.choices.items()},
        )

    def evaluate(
        self,
        image: Tensor,
        *,
        targets: Tensor | None = None,
        positions: Tensor | None = None,
        progress: ProgressArg = "auto",
        reuse_clean: bool = False,
    ) -> OcclusionResult:
        """Scores of every target at every position (or the ``positions`` given).

        ``targets`` is an int tensor ``[N, T]`` of classes per image (default: the target given
        to ``compile``, else the predicted class); ``positions`` indexes the row-major grid.
        ``reuse_clean``: keep the clean forward's views and reuse them when the next call has
        the same images (a session's statements over one image set); it holds one set of
        views in memory.
        """
        images = check.images(image, self.shape)
        if self.dtype is not None:
            images = images.to(self.dtype)
        check.same_place(self.model, images)
        positions = check.positions(positions, len(self.positions), images.device)
        weights = Weights(self.exported.tensors)
        with torch.no_grad():
            views = self._views(images, weights, reuse_clean)
            batch = memory.batch_for(self.physical, images.element_size(), images.device)
            logits = views[self.physical.output]
            check.finite_scores(logits)
            if targets is None:
                targets = check.targets(
                    self.target, len(images), logits.shape[1], logits.argmax(dim=1)
                )
            else:
                targets = check.target_table(targets, len(images), logits.shape[1], logits.device)
            base = select_scores(logits, targets, self.occlusion.score)
            executor = Executor(
                self.physical,
                views,
                weights,
                self.optimized.origins,
                self.positions,
                self.runner,
            )
            total = len(images) * (len(positions) if positions is not None else len(self.positions))
            with progress_callback(progress, total, "occlusion") as report:
                scores = executor.run(targets, self.occlusion.score, batch, report, positions)
        heatmaps = scores.reshape(len(images), targets.shape[1], *self.grid)
        return OcclusionResult(heatmaps, base, targets, executor.queries_run)

    def sql_heatmap(
        self, image: Tensor, *, target: int | None = None, positions: Any = None
    ) -> Tensor:
        """The heatmap of one image ``[C,H,W]`` computed by running the incremental plan as SQL
        in DuckDB (``explain(sql=True)`` prints it): the relational semantics, executable.
        Every cell is a row: for tiny models and images (tests, teaching), not for speed.
        ``positions``: grid indices to compute (NaN elsewhere)."""
        from runtime import relational

        image = check.images(image, self.shape)
        if image.dim() == 4:
            if len(image) != 1:
                raise InvalidInputError("sql_heatmap takes one image [C, H, W]")
            image = image[0]
        return relational.heatmap(
            self.optimized.plan,
            self.optimized.origins,
            self.positions,
            Weights(self.exported.tensors),
            image.float(),
            score=self.occlusion.score,
            target=target if target is not None else self.target,
            chosen=None if positions is None else np.asarray(positions, dtype=np.int64),
        )

    def _views(self, images: Tensor, weights: Weights, reuse: bool) -> dict[str, Tensor]:
        """The clean forward's views of ``images`` (one forward per image set when reusing)."""
        kept = self._clean
        if (
            reuse
            and kept is not None
            and kept[0].shape == images.shape
            and kept[0].device == images.device
            and torch.equal(kept[0], images)
        ):
            self.clean_forwards_reused += 1
            return kept[1]
        element = images.element_size()
        memory.check_fits(self.physical, len(images), element, images.device)
        needed = memory.view_bytes(self.physical, len(images), element)
        views = memory.allocating(
            "computing the clean forward's views", needed, images.device,
            lambda: materialize(self.physical, images, weights),
        )  # fmt: skip
        self._clean = (images.clone(), views) if reuse else None
        return views


def _device(model: nn.Module) -> torch.device:
    parameter = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


def compile(
    model: nn.Module,
    input_shape: Any,
    *,
    patch: Any,
    stride: Any = 1,
    color: Any = 0.0,
    target: Any = None,
    score: Any = "prob",
    batch_size: int | None = None,
    memory_budget: int | None = None,
    linear_strategy: str = "auto",
    backend: str = "auto",
    conv: str = "measure",
    precision: str | None = None,
    tau: float | None = None,
    drilldown: float | None = None,
    speedup: float | None = None,
    ssim: float | None = None,
    profile: Any = None,
    drilldown_mode: str = "grid",
    guard: bool = True,
) -> HeatmapPlan:
    """Compile an incremental occlusion plan for images of ``input_shape`` (C, H, W): exact
    unless an approximation is asked for.

    ``backend``: ``"auto"`` (Triton kernels on CUDA, the torch reference on the CPU),
    ``"torch"`` or ``"triton"`` (on CPU tensors: Triton's interpreter, slow — for tests).
    ``conv`` (Triton backend): run each convolution with the fused kernel (``"triton"``),
    gather + cuDNN (``"cudnn"``), or whichever is faster on the first batch (``"measure"``).
    ``precision``: ``None`` runs in the model's own dtype; ``"fp32"``, ``"bf16"`` or ``"fp16"``
    run a converted copy of the model on images cast to it (fp32 allows TF32 where torch does).
    Scores are always reported in fp32.

    Approximation (off unless asked; explain marks it ``≈``):
    ``tau`` in (0, 1]: cap every layer's update box at ``round(τ·W_O)`` per side, centred;
    cells outside keep their clean values (projective-field thresholding; 1 is exact).
    ``drilldown`` (a fraction r in (0, 1]) and/or ``speedup`` (a target > 1; defaults r = 0.25,
    target 3): run every position at a coarse stride, then ``stride`` only at a fraction r of
    the cells (``DrillDownPlan``). ``ssim`` in (0, 1] with ``profile`` (from ``kql.tune``):
    the smallest τ — and the drill-down, if the profile measured one — that met the target.
    ``drilldown_mode``: ``"grid"`` (the paper's coarse stride, bilinear interpolation) or
    ``"lattice"`` (the same query budget on a lattice of fine cells, thin-plate-spline
    reconstruction: much closer to exact; see ``compiler/drilldown.py``).
    ``guard`` (with ``ssim``; default on): check every heatmap against exact scores at a few
    random positions and run the images estimated below the target again at a larger τ,
    ending at exact (``krypton_ql.guard``; results carry ``ssim_estimate``).
    """
    options = Options.build(
        input_shape,
        patch=patch,
        stride=stride,
        color=color,
        target=target,
        score=score,
        batch_size=batch_size,
        memory_budget=memory_budget,
        linear_strategy=linear_strategy,
        backend=backend,
        conv=conv,
        precision=precision,
        tau=tau,
        drilldown=drilldown,
        speedup=speedup,
        ssim=ssim,
        profile=profile,
        drilldown_mode=drilldown_mode,
        guard=guard,
    )
    return build_plan(model, options)


def build_plan(model: nn.Module, options: Options) -> HeatmapPlan:
    """The plan of validated ``options``: an ``OcclusionPlan``, or a ``DrillDownPlan`` of two
    stages when ``options.drilldown`` asks for one (lattice mode runs the fine plan twice)."""
    check.model(model)
    if options.guard is not None:
        from krypton_ql.guard import GuardedPlan

        return GuardedPlan(model, options, build_plan)
    settings = options.drilldown
    if settings is None:
        return OcclusionPlan(model, options)
    fine = OcclusionPlan(model, options.stage(settings.fine))
    if settings.mode is DrillDownMode.LATTICE:
        return DrillDownPlan(None, fine, settings)
    return DrillDownPlan(OcclusionPlan(model, options.stage(settings.coarse)), fine, settings)


def occlusion_heatmap(
    model: nn.Module,
    image: Tensor,
    *,
    patch: Any,
    stride: Any = 1,
    color: Any = 0.0,
    target: Any = None,
    score: Any = "prob",
    batch_size: int | None = None,
    progress: ProgressArg = "auto",
    backend: str = "auto",
    precision: str | None = None,
    tau: float | None = None,
    drilldown: float | None = None,
    speedup: float | None = None,
    ssim: float | None = None,
    profile: Any = None,
    drilldown_mode: str = "grid",
    guard: bool = True,
    region: Any = None,
    output: Any = None,
) -> Tensor:
    """Occlusion heatmap, computed incrementally: ``[rows, cols]`` for ``[C,H,W]``,
    ``[N, rows, cols]`` for ``[N,C,H,W]``. Cell ``(i, j)`` is the target's score (softmax
    probability, or the raw output with ``score="logit"``) with the patch at ``(i·Sy, j·Sx)``.
    Exact unless ``tau``, ``drilldown``, ``speedup`` or ``ssim`` asks for an approximation
    (see ``compile``).

    A model whose output is a score map ``[N, K, H', W']`` (or a dict / tuple holding one:
    ``output=`` names the entry, default ``"out"`` or the only map) is explained by region
    scores (``krypton_ql.segmentation``): the cell is the mean over ``region`` — a boolean
    mask ``[H, W]`` or a box ``(y0, x0, y1, x1)``, default the pixels the clean image predicts
    as ``target`` — of the class's per-pixel probability (or logit), the map resized to the
    input size as torchvision's heads do (bilinear). For one image, ``target`` may list several
    classes (each with its own default region): ``[T, rows, cols]``, all in one pass."""
    images = check.images(image)
    keywords = dict(patch=patch, stride=stride, color=color, batch_size=batch_size,
                    progress=progress, backend=backend, precision=precision, tau=tau,
                    drilldown=drilldown, speedup=speedup, ssim=ssim, profile=profile,
                    drilldown_mode=drilldown_mode, guard=guard)  # fmt: skip
    if (
        region is not None
        or output is not None
        or segmentation.returns_map(check.model(model), images, output)
    ):
        maps = segmentation.heatmaps(
            _class_heatmap, model, images, region=region, output=output, target=target,
            score=score, several=_class_heatmaps, **keywords,
        )  # fmt: skip
        return maps[0] if image.dim() == 3 else maps
    return _class_heatmap(model, image, target=target, score=score, **keywords)


def _class_heatmap(model: nn.Module, image: Tensor, *, progress: ProgressArg, **keywords: Any):
    """``occlusion_heatmap`` of a model with class scores (region scores call it with their
    wrapper, which needs no second look at its output)."""
    images = check.images(image)
    options = Options.build(tuple(images.shape[1:]), **keywords)
    return build_plan(model, options).run(image, progress=progress)


def _class_heatmaps(
    model: nn.Module, image: Tensor, classes: list[int], *, progress: ProgressArg, **keywords: Any
) -> Tensor:
    """``[T, rows, cols]``: several classes' heatmaps of one image in one pass."""
    images = check.images(image)
    plan = build_plan(model, Options.build(tuple(images.shape[1:]), **keywords))
    table = torch.tensor([classes], device=images.device)
    return plan.evaluate(images, targets=table, progress=progress).heatmaps[0]


def explain(model: nn.Module, input_shape: Any, **options: Any) -> str:
    """The plan ``compile(model, input_shape, **options)`` would run, as text."""
    verbose = options.pop("verbose", False)
    sql = options.pop("sql", False)
    return compile(model, input_shape, **options).explain(verbose=verbose, sql=sql)
