"""Scores of regions of any shape — superpixels, Captum feature masks, objects — computed
incrementally: one query per region, its update the region's cells inside the region's
bounding box, queries grouped into plans by box size (``compiler.regions``).

``ablate`` runs them and returns an ``AblationResult``: for each input, target and region, the
target's score with that region set to the fill (a colour by default, a per-pixel baseline, or
any ``kql.Fill``); cells of a region's box outside the region keep their values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compiler.errors import InvalidInputError
from compiler.regions import DEFAULT_MAX_PLANS, DEFAULT_RATIO, Buckets, bucketize, regions_of
from krypton_ql import options as check
from krypton_ql.options import Options
from krypton_ql.plans import exports
from krypton_ql.plans.base import ProgressArg
from krypton_ql.plans.occlusion import OcclusionPlan
from runtime.fill import Fill


@dataclass
class AblationResult:
    """What ``ablate`` computed for inputs ``[N, C, *spatial]`` and regions ``ids``."""

    scores: Tensor  # [N, T, S] the target's score with region s filled (NaN: not in input n)
    base: Tensor  # [N, T] scores on the clean inputs
    targets: Tensor  # [N, T] the class of each score
    ids: Tensor  # [S] the region labels, ascending
    labels: Tensor  # [N or 1, C or 1, *spatial] each cell's region
    buckets: list[Buckets] = field(default_factory=list)  # per label image: the plans it ran
    queries: int = 0  # region queries executed

    @property
    def drops(self) -> Tensor:
        """``base − scores`` ``[N, T, S]``: how much hiding each region lowers the score."""
        return self.base[:, :, None] - self.scores

    def maps(self, values: Tensor | None = None) -> Tensor:
        """``values`` (``[N, T, S]``, default ``drops``) painted on each region's cells:
        ``[N, T, C or 1, *spatial]`` (the labels' channels), NaN outside every region."""
        values = self.drops if values is None else values
        count, kinds = values.shape[:2]
        labels = self.labels.expand(count, *self.labels.shape[1:])
        index = torch.searchsorted(self.ids.to(labels.device), labels.contiguous())
        index = index.clamp(max=len(self.ids) - 1)
        flat = index.reshape(count, 1, -1).expand(count, kinds, -1)
        painted = torch.gather(values.to(labels.device).float(), 2, flat)
        return painted.reshape(count, kinds, *labels.shape[1:])

    def describe(self) -> str:
        """The plans that ran: per label image, each bucket's box and region count."""
        return "\n".join(b.describe() for b in self.buckets)


def ablate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    fill: Fill | None = None,
    color: Any = 0.0,
    target: Any = None,
    score: str = "prob",
    ratio: float = DEFAULT_RATIO,
    max_plans: int | None = DEFAULT_MAX_PLANS,
    progress: ProgressArg = False,
    batch_size: int | None = None,
    backend: str = "auto",
    only: list[np.ndarray] | None = None,
) -> AblationResult:
    """Each region of ``labels`` (integers broadcast to ``images`` ``[N, C, *spatial]``: one
    label image for every input, ``[1, 1, *spatial]``, or one per input, per channel) filled
    in turn: ``color`` (or ``fill``'s content) on the region's cells, the model scored on
    ``target`` (a class, one per input, or None: each input's prediction; the plans check it
    against the model's classes). ``ratio`` and ``max_plans``: how
    regions are bucketed (``compiler.regions.bucketize``). The model is exported once (and kept
    for the next calls while its weights are unchanged) and the clean forward runs once per
    label image; each bucket compiles its own plan. ``only``: per label image, the labels to
    compute (the others' scores stay NaN)."""
    d = images.dim() - 2
    if not 1 <= d <= 3:
        raise InvalidInputError(
            f"regions need inputs [N, C, *spatial] of 1 to 3 spatial axes, got {list(images.shape)}"
        )
    check.model(model)
    target = check.target_spec(target)
    labels = _labels(labels, images)
    spatial = tuple(int(n) for n in images.shape[2:])
    shape = tuple(int(n) for n in images.shape[1:])
    groups = [(slice(None), labels[:1])] if labels.shape[0] == 1 else [
        (slice(n, n + 1), labels[n : n + 1]) for n in range(len(images))
    ]  # fmt: skip
    ids = torch.from_numpy(np.unique(labels.cpu().numpy()))
    exported = exports.exported(model, shape)
    state = _Scores(len(images), len(ids))
    per_group = [regions_of(group[0].cpu().numpy(), d) for _, group in groups]
    if only is not None:
        if len(only) != len(per_group):
            raise InvalidInputError(f"only= needs one label set per label image ({len(per_group)})")
        per_group = [regions.subset(keep) for regions, keep in zip(per_group, only)]
    inputs = len(images) if len(groups) == 1 else 1  # the inputs each label image serves
    report = None
    if callable(progress):
        report = _Cumulative(progress, sum(len(r) for r in per_group) * inputs)
    all_buckets = []
    for (rows, group), regions in zip(groups, per_group):
        buckets = bucketize(regions, spatial, ratio, max_plans)
        all_buckets.append(buckets)
        where = np.searchsorted(ids.numpy(), regions.ids)
        chosen = target if len(groups) == 1 or not isinstance(target, tuple) else (
            target[rows.start],)  # fmt: skip
        plans = [
            OcclusionPlan(model, Options.build(
                shape, patch=bucket.box, color=color, target=chosen, score=score,
                batch_size=batch_size, backend=backend, spatial_dims=d,
            ).at_windows([a.tolist() for a in bucket.starts]), exported)
            for bucket in buckets.buckets
        ]  # fmt: skip
        _share_views(plans)
        for number, (bucket, plan) in enumerate(zip(buckets.buckets, plans)):
            content = fill if fill is not None else Fill(add=_colour(plan.occlusion.color, d))
            content = content.select(rows, d)  # this label image's inputs (a per-input baseline)
            region_ids = torch.from_numpy(regions.ids[bucket.members])
            if number:
                plan.share_clean(plans[0], images[rows].to(plans[0].dtype or images.dtype))
            result = plan.evaluate(
                images[rows], targets=state.targets(rows, images.device),
                progress=report.after(state.queries) if report else progress,
                fill=content.in_regions(group, region_ids), reuse_clean=True,
            )  # fmt: skip
            state.add(rows, result, torch.from_numpy(where[bucket.members]))
        for plan in plans:
            plan.forget_clean()  # the views of this label image are no longer needed
    return AblationResult(
        state.scores, state.base, state.chosen, ids, labels, all_buckets, state.queries
    )


class _Cumulative:
    """One ``(done, total)`` callback over every plan's queries (each plan reports its own)."""

    def __init__(self, callback: Any, total: int) -> None:
        self.callback, self.total = callback, total

    def after(self, done_before: int) -> Any:
        """The callback of the next plan, whose queries follow ``done_before`` others."""
        return lambda done, _total: self.callback(done_before + done, self.total)


class _Scores:
    """What ``ablate`` gathers from its plans: scores, clean scores, the targets chosen (the
    first plan's predictions serve an input's other plans) and the queries run."""

    def __init__(self, count: int, regions: int) -> None:
        self.scores = torch.full((count, 1, regions), float("nan"))
        self.base = torch.full((count, 1), float("nan"))
        self.chosen = torch.zeros((count, 1), dtype=torch.int64)
        self.known = torch.zeros(count, dtype=torch.bool)
        self.queries = 0

    def targets(self, rows: slice, device: torch.device) -> Tensor | None:
        return self.chosen[rows].to(device) if bool(self.known[rows].all()) else None

    def add(self, rows: slice, result: Any, index: Tensor) -> None:
        self.queries += result.queries
        self.chosen[rows] = result.targets.cpu()
        self.known[rows] = True
        self.base[rows] = result.base.float().cpu()
        self.scores[rows, :, index] = result.heatmaps.float().cpu()


def _share_views(plans: list[OcclusionPlan]) -> None:
    """Let the first plan's clean forward keep every view the others read (when their nodes
    are the same), so that they take its views instead of running their own."""
    if not plans:  # every region of this label image was left out (``only``)
        return
    names = [n.name for n in plans[0].physical.nodes]
    if all([n.name for n in p.physical.nodes] == names for p in plans[1:]):
        union = frozenset().union(*(p.physical.views for p in plans[1:]))
        plans[0].extra_views = union - plans[0].physical.views


def _labels(labels: Any, images: Tensor) -> Tensor:
    """``labels`` as an integer tensor ``[N or 1, C or 1, *spatial]`` that broadcasts to
    ``images``."""
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, Tensor):
        raise InvalidInputError(f"region labels must be a tensor or an array, got {labels!r}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise InvalidInputError(f"region labels must be integers, got {labels.dtype}")
    rank = images.dim()
    if labels.dim() > rank:
        raise InvalidInputError(
            f"region labels of shape {list(labels.shape)} have more axes than the input "
            f"{list(images.shape)}"
        )
    labels = labels.reshape((1,) * (rank - labels.dim()) + tuple(labels.shape))
    try:
        np.broadcast_shapes(tuple(labels.shape), tuple(images.shape))
    except ValueError:
        raise InvalidInputError(
            f"region labels of shape {list(labels.shape)} do not broadcast to the input "
            f"{list(images.shape)}"
        ) from None
    spatial = tuple(images.shape[2:])
    return labels.expand(labels.shape[0], labels.shape[1], *spatial).to(images.device)


def _colour(color: tuple[float, ...], d: int) -> Tensor:
    """The plan's colour as a window fill ``[C or 1, 1, …]``."""
    return torch.tensor(color).reshape(-1, *([1] * d))


__all__ = ["DEFAULT_MAX_PLANS", "DEFAULT_RATIO", "AblationResult", "ablate"]
