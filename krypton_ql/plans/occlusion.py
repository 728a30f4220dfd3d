"""``OcclusionPlan``: one compiled occlusion workload — export, import, rewrite, lower — and
its execution (one clean forward that materializes the views, then batches of queries)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compiler import explain as explain_text
from compiler.boxes import Positions
from compiler.cost import PlanCost, plan_cost
from compiler.errors import InvalidInputError, UnsupportedOperationError
from compiler.importer import import_model
from compiler.lower import lower
from compiler.pipeline import optimize
from compiler.types import Size
from krypton_ql import options as check
from krypton_ql.options import Options
from krypton_ql.plans.base import HeatmapPlan, OcclusionResult, ProgressArg
from krypton_ql.plans.exports import exported as kept_export
from krypton_ql.progress import progress_callback
from runtime import memory
from runtime.backends import runner_for
from runtime.executor import Executor, materialize, select_scores
from runtime.fill import Fill
from runtime.memory import default_budget
from runtime.resolve import Backend, resolve
from runtime.weights import Weights

log = logging.getLogger(__name__)

# What compiling one border group costs (optimize and lower: 0.03–0.04 s for ResNet18 and VGG16
# on the 2-core CPU), in the multiply-adds the device runs meanwhile (about 70 GFMA/s on that
# CPU; a GPU's rate assumed at 25 TFMA/s, not yet measured), keyed by "is CUDA": border groups
# are compiled only when their saving can pay for them. The split saved at most 18% of the one
# plan's multiply-adds where measured (``MAX_GROUP_SAVING``: the bound checked before
# compiling any group).
GROUP_COMPILE_FMA = {False: 3e9, True: 1e12}
MAX_GROUP_SAVING = 0.25
# Fewer queries per group run in batches too small to keep the GEMMs efficient.
MIN_GROUP_QUERIES = 16


class OcclusionPlan(HeatmapPlan):
    """A compiled occlusion workload for images of one shape. Build it with ``compile``."""

    def __init__(self, model: nn.Module, options: Options, exported: Any = None):
        """``options`` of one stage (no drill-down); ``exported``: the model's program at this
        shape when the caller exported it already (several plans of one model and shape)."""
        check.model(model)
        if options.drilldown is not None:
            raise InvalidInputError("an OcclusionPlan runs one stage; kql.compile plans both")
        self.options = options
        self.dtype = options.precision
        self._clean: tuple[Tensor, dict[str, Tensor]] | None = None
        # Views the clean forward keeps beyond this plan's own: those of other plans that
        # take them with ``share_clean`` (the buckets of ``plans.regions``).
        self.extra_views: frozenset[str] = frozenset()
        self.clean_forwards_reused = 0  # evaluate(reuse_clean=True) calls that ran no forward
        model = check.in_precision(model, self.dtype)
        self.model, self.shape, self.target = model, options.shape, options.target
        self.occlusion = options.occlusion
        device = _device(model)
        self.backend = resolve(options.backend, device.type)
        self.runner = runner_for(self.backend, options.conv)
        compile_options = options.compile_options(default_budget(device))
        self.exported = exported if exported is not None else kept_export(model, self.shape)
        self.logical = import_model(
            self.exported, self.shape, self.occlusion.patch, self.occlusion.color
        )
        check.scored_classes(self.classes, self.occlusion.score)
        image = Size(*self.shape[1:])
        if self.occlusion.windows is not None:
            self.positions = Positions.listed(self.occlusion.windows)
        elif self.occlusion.starts is not None:
            self.positions = Positions.product(self.occlusion.starts)
        else:
            self.positions = Positions.grid_of(image, self.occlusion.patch, self.occlusion.stride)
        self.optimized = optimize(self.logical, compile_options, self.positions)
        self.physical = lower(self.optimized.plan)
        if self.backend is Backend.TRITON:  # what the kernels address and a GPU launches
            from runtime.kernels import limits

            limits.check(self.physical, cuda=device.type == "cuda")
        self._compile_options = compile_options
        self._device = device
        batching = self.physical.batching
        if not log.isEnabledFor(logging.INFO):  # the message computes the theoretical speedup
            return
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

    @functools.cached_property
    def centre_cost(self) -> PlanCost:
        """FMAs of full re-inference and of the incremental plan, patch at the image centre
        (computed when first asked: a second rewrite of the plan), with the uniform boxes the
        paper counts (``CompileOptions.fit_boxes=False``)."""
        centre = Positions.centre(Size(*self.shape[1:]), self.occlusion.patch)
        uniform = dataclasses.replace(self._compile_options, fit_boxes=False)  # as the paper
        optimized = optimize(self.logical, uniform, centre)
        return plan_cost(self.logical, optimized.plan)

    @property
    def theoretical_speedup(self) -> float:
        """FMA ratio of full re-inference to the incremental plan, patch at the image centre."""
        return self.centre_cost.speedup

    @property
    def classes(self) -> int:
        return self.logical[self.logical.output].schema.shape[0]

    def explain(self, verbose: bool = False, sql: bool = False) -> str:
        """The plan as text: logical, rewritten (rules that fired) and physical sections, and
        the border groups when the grid runs in several plans."""
        text = self._explain(verbose, sql)
        if not self.groups:
            return text
        full = plan_cost(self.logical, self.optimized.plan).incremental.fma
        lines = ["", "== border groups (one plan each; boxes fitted to their positions) =="]
        split = 0.0
        for group in self.groups:
            fma = plan_cost(self.logical, group.optimized.plan).incremental.fma
            split += fma * len(group.members)
            lines.append(f"{len(group.members)} positions, {fma / full:.0%} of a grid query's "
                         f"multiply-adds, batch {group.physical.batching.batch_size}")  # fmt: skip
        lines.append(f"together: {split / (full * len(self.positions)):.0%} of the grid plan's")
        return text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"

    def _explain(self, verbose: bool, sql: bool) -> str:
        return explain_text.render(
            self.logical,
            self.optimized,
            self.physical,
            self.centre_cost,
            self.grid,
            verbose=verbose,
            sql=sql,
            backend=self._backend_text(),
            choices={name: choice.value for name, choice in self.runner.choices.items()},
        )

    def _backend_text(self) -> str:
        """What runs the steps; the Triton kernels are 2-D, so other ranks run on the torch
        reference whatever the backend."""
        d = len(self.shape) - 1
        if d == 2 or self.backend is not Backend.TRITON:
            return self.runner.describe()
        return f"torch reference (the Triton kernels take 2-D maps; these have {d} axes)"

    def evaluate(
        self,
        image: Tensor,
        *,
        targets: Tensor | None = None,
        positions: Tensor | None = None,
        progress: ProgressArg = "auto",
        reuse_clean: bool = False,
        fill: Fill | None = None,
    ) -> OcclusionResult:
        """Scores of every target at every position (or the ``positions`` given).

        ``targets`` is an int tensor ``[N, T]`` of classes per image (default: the target given
        to ``compile``, else the predicted class); ``positions`` indexes the row-major grid.
        ``reuse_clean``: keep the clean forward's views and reuse them when the next call has
        the same images (a session's statements over one image set); it holds one set of
        views in memory. ``fill`` (``kql.Fill``): the windows' content instead of the
        colour — a per-pixel baseline, ``x·mul + add`` over the window, or the window's mean.
        """
        images = check.images(image, self.shape)
        if fill is not None:
            check.fill(fill).check(self.shape, tuple(self.occlusion.patch), len(images))
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
            total = len(images) * (len(positions) if positions is not None else len(self.positions))
            with progress_callback(progress, total, "occlusion") as report:
                if self.groups:
                    scores, queries = self._run_groups(
                        views, weights, fill, targets, images, positions, report, total
                    )
                else:
                    executor = Executor(self.physical, views, weights, self.optimized.origins,
                                        self.positions, self.runner, fill)  # fmt: skip
                    scores = executor.run(targets, self.occlusion.score, batch, report, positions)
                    queries = executor.queries_run
        heatmaps = scores.reshape(len(images), targets.shape[1], *self.grid)
        return OcclusionResult(heatmaps, base, targets, queries)

    def _run_groups(
        self,
        views: dict[str, Tensor],
        weights: Weights,
        fill: Fill | None,
        targets: Tensor,
        images: Tensor,
        positions: Tensor | None,
        report: Any,
        total: int,
    ) -> tuple[Tensor, int]:
        """Scores ``[N, T, P]`` computed group by group (``_border_groups``), each group's
        plan over its own positions; the progress counts every group's queries."""
        scores = torch.full((len(images), targets.shape[1], len(self.positions)), float("nan"),
                            dtype=torch.float32, device=images.device)  # fmt: skip
        wanted = None if positions is None else positions.cpu().numpy()
        done = queries = 0
        for group in self.groups:
            local = np.arange(len(group.members))
            if wanted is not None:
                local = local[np.isin(group.members, wanted)]
            if not len(local):
                continue
            executor = Executor(group.physical, views, weights, group.optimized.origins,
                                group.positions, self.runner, fill)  # fmt: skip
            batch = memory.batch_for(group.physical, images.element_size(), images.device)
            chosen = torch.from_numpy(local).to(images.device)

            def progress(finished: int, _: int, offset: int = done) -> None:
                report(offset + finished, total)

            part = executor.run(targets, self.occlusion.score, batch,
                                progress if report is not None else None, chosen)  # fmt: skip
            members = torch.from_numpy(group.members[local]).to(images.device)
            scores[:, :, members] = part[:, :, chosen]
            done += len(images) * len(local)
            queries += executor.queries_run
        return scores, queries

    @functools.cached_property
    def groups(self) -> list[_Group]:
        """The border groups the plan runs in (``_border_groups``; compiled when first run or
        explained, so a plan only compiled pays nothing)."""
        groups = self._border_groups(self._compile_options)
        if groups and self.backend is Backend.TRITON:
            from runtime.kernels import limits

            for group in groups:
                limits.check(group.physical, cuda=self._device.type == "cuda")
        return groups

    def _border_groups(self, compile_options: Any) -> list[_Group]:
        """Exact grid plans split by the patch's distance to the border: along each axis, the
        positions within an eighth of the image of the first border, of the last, and the
        rest. Each group gets its own plan, whose boxes fit its queries (``boxes.fitted_box``):
        near a border, a box grows on one side only. Kept when it cuts the plan's predicted
        multiply-adds by at least 5% and by more than the groups' compile costs
        (``GROUP_COMPILE_FMA``), and every group has 16 queries or more (measured: VGG16 and
        ResNet18 at 729 positions run 6–8% faster; at 49, whose corner groups hold one query
        each, 1.3–1.5× slower); none for approximate plans, listed windows, and inputs of
        other than 2 spatial axes. A plan too small for groups to pay compiles none."""
        if (
            self.options.tau < 1
            or self.occlusion.windows is not None
            or len(self.positions.grid) != 2  # images: 9 groups (a volume's 27 cost more)
            or any(n < 3 for n in self.positions.grid)
        ):
            return []
        image, patch = self.shape[1:], tuple(self.occlusion.patch)
        bins = []
        for starts, n, p in zip(self.positions.starts, image, patch):
            reach = max(1, n // 8)
            bins.append(np.where(starts < reach, 0, np.where(starts + p > n - reach, 2, 1)))
        keys = np.ravel_multi_index(tuple(bins), (3,) * len(bins))
        counts = np.unique(keys, return_counts=True)[1]
        if len(counts) < 2 or counts.min() < MIN_GROUP_QUERIES:
            return []
        full = plan_cost(self.logical, self.optimized.plan).incremental.fma * len(self.positions)
        compile_cost = len(counts) * GROUP_COMPILE_FMA[self._device.type == "cuda"]
        if MAX_GROUP_SAVING * full < compile_cost:  # not even the best split would pay
            return []
        groups, split = [], 0.0
        for key in np.unique(keys):
            members = np.flatnonzero(keys == key)
            positions = Positions.listed(tuple(s[members].tolist() for s in self.positions.starts))
            optimized = optimize(self.logical, compile_options, positions)
            split += plan_cost(self.logical, optimized.plan).incremental.fma * len(members)
            groups.append(_Group(members, positions, optimized, lower(optimized.plan)))
        if full - split < max(0.05 * full, compile_cost):
            return []
        log.info("%d border groups: %.0f%% of the grid plan's multiply-adds", len(groups),
                 100 * split / full)  # fmt: skip
        return groups

    def sql_heatmap(
        self, image: Tensor, *, target: int | None = None, positions: Any = None
    ) -> Tensor:
        """The heatmap of one image ``[C,H,W]`` computed by running the incremental plan as SQL
        in DuckDB (``explain(sql=True)`` prints it): the relational semantics, executable.
        Every cell is a row: for tiny models and images (tests, teaching), not for speed.
        ``positions``: grid indices to compute (NaN elsewhere)."""
        from runtime import relational

        if len(self.shape) != 3:
            raise UnsupportedOperationError(
                f"the plan as SQL covers images (rows and columns); this plan's input has "
                f"{len(self.shape) - 1} spatial axes"
            )
        image = check.images(image, self.shape)
        if len(image) != 1:
            raise InvalidInputError("sql_heatmap takes one image [C, H, W]")
        image = image[0]
        chosen = target if target is not None else self.target
        if isinstance(chosen, tuple):
            raise InvalidInputError("sql_heatmap explains one class: give target=")
        return relational.heatmap(
            self.optimized.plan,
            self.optimized.origins,
            self.positions,
            Weights(self.exported.tensors),
            image.float(),
            score=self.occlusion.score,
            target=chosen,
            chosen=None if positions is None else np.asarray(positions, dtype=np.int64),
        )

    def share_clean(self, other: OcclusionPlan, images: Tensor) -> bool:
        """Take ``other``'s kept clean views of ``images`` (evaluated with ``reuse_clean``) when
        this plan's nodes are the same and those views hold every view this plan reads, so
        that its next ``evaluate(images, reuse_clean=True)`` runs no clean forward."""
        kept = other._clean
        if kept is None or not torch.equal(kept[0], images):
            return False
        same = [n.name for n in self.physical.nodes] == [n.name for n in other.physical.nodes]
        if not same or not self.physical.views <= kept[1].keys():
            return False
        self._clean = kept
        return True

    def forget_clean(self) -> None:
        """Drop the clean views kept by ``evaluate(reuse_clean=True)`` or ``share_clean``."""
        self._clean = None

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
        kept_views = self.physical.views | self.extra_views
        for group in self.groups:  # each group's plan reads its own views
            kept_views |= group.physical.views
        physical = dataclasses.replace(self.physical, views=kept_views)
        memory.check_fits(physical, len(images), element, images.device)
        needed = memory.view_bytes(physical, len(images), element)
        views = memory.allocating(
            "computing the clean forward's views", needed, images.device,
            lambda: materialize(physical, images, weights),
        )  # fmt: skip
        self._clean = (images.clone(), views) if reuse else None
        return views


def _device(model: nn.Module) -> torch.device:
    parameter = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


@dataclasses.dataclass(frozen=True)
class _Group:
    """Positions of a grid plan near the same borders, with their own plan (``_border_groups``)."""

    members: np.ndarray  # indices into the grid's positions
    positions: Positions
    optimized: Any
    physical: Any
