"""Tuning profiles: what ``kql.tune`` measured, which ``ssim`` targets choose from
(``krypton_ql.options.resolve_ssim``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from compiler.errors import InvalidInputError


@dataclass
class Profile:
    """What ``tune`` measured: for each τ tried, the SSIM of each sample image's heatmap against
    the exact one; optionally the same for drill-down speedup targets at the chosen τ.
    Serializable (``to_json`` / ``from_json`` / ``save`` / ``load``)."""

    patch: int | list[int]  # an int, or one per spatial axis where they differ
    stride: int | list[int]
    criterion: str  # how one number is made of the samples' SSIMs: "min" or "mean"
    taus: dict[str, list[float]] = field(default_factory=dict)  # τ → SSIM per sample
    drilldown_ratio: float | None = None
    drilldown_mode: str = "lattice"
    drilldown: dict[str, list[float]] = field(default_factory=dict)  # target → SSIM per sample
    # How far above a target a τ's criterion must be for ``tau_for`` to choose it. The guard's
    # SSIM estimate is off by about 0.02 (mean absolute error on the tuning set), so a τ that
    # only just meets the target on the sample is re-run for many new images, at more than
    # the cost of exact; 0 chooses the smallest τ that meets the target at all.
    margin: float = 0.02
    # What the profile was tuned for (``kql.tune`` fills them; None in profiles written before
    # they existed, or made by hand): the model (its class, parameter count and a digest of its
    # weights), the input shape, the SSIM target asked for and how many sample images.
    model: str | None = None
    input_shape: list[int] | None = None
    target: float | None = None
    images: int | None = None
    # What the planner (``quality.planner``) weighs, from ``kql.tune``: each τ's time per query
    # over exact's, measured ("1": 1.0); and each coarse-to-fine refinement replayed on the
    # samples (key: the first lattice's period, "@τ" over a τ plan), per sample image — its
    # SSIM against exact, the fractions of the positions run by the plan ("queries") and by
    # the exact plan ("exact"), the reconstruction's time over an exact run's ("overhead") and
    # the guard's last estimate — at the SSIM target ``refine_target``. Empty in profiles
    # from before the planner: their τ (and drill-down) is chosen as it was.
    costs: dict[str, float] = field(default_factory=dict)
    refine: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    refine_target: float | None = None
    check: float = 0.03  # the refinements' check fraction (``options.Refine.check``)
    made_by: str | None = None  # how a shipped profile was made (a command, a machine)

    def fitted(self) -> str:
        """What the profile fits, in words: the model, input, grid, target and sample.

        >>> profile = Profile(16, 4, "min", model="EfficientNet (4,652,008 parameters)",
        ...                   input_shape=[3, 224, 224], target=0.9, images=24)
        >>> print(profile.fitted().replace(", i", ",\\ni"))
        tuned for EfficientNet (4,652,008 parameters),
        input [3, 224, 224], patch 16, stride 4, SSIM 0.9, on 24 images
        """
        parts = [f"tuned for {self.model or 'an unrecorded model'}"]
        if self.input_shape is not None:
            parts.append(f"input {list(self.input_shape)}")
        parts += [f"patch {self.patch}", f"stride {self.stride}"]
        if self.target is not None:
            parts.append(f"SSIM {self.target:g}")
        if self.images is not None:
            parts.append(f"on {self.images} images")
        return ", ".join(parts)

    def fits(self, size: tuple[int, ...], what: str = "patch") -> bool:
        """Whether this profile was tuned at this ``patch`` (or ``stride``; one int per spatial
        axis).

        >>> Profile(16, 8, "min").fits((16, 16, 16)), Profile([2, 8, 8], 4, "min").fits((8, 8, 8))
        (True, False)
        >>> Profile(16, 8, "min").fits((4, 4), "stride")
        False
        """
        value = self.patch if what == "patch" else self.stride
        tuned = value if isinstance(value, list) else [value] * len(size)
        return list(size) == list(tuned)

    def score(self, values: list[float]) -> float:
        return float(np.min(values) if self.criterion == "min" else np.mean(values))

    def tau_for(self, target: float) -> float:
        """The smallest τ measured to meet ``target`` with ``margin`` to spare (1.0, exact, if
        none does)."""
        goal = target + self.margin - 1e-12
        meeting = [float(t) for t, v in self.taus.items() if self.score(v) >= goal]
        return min(meeting, default=1.0)

    def ladder(self, tau: float) -> tuple[float, ...]:
        """The τs a quality guard re-runs an image at after ``tau``, ascending and ending at 1
        (exact): each one measured better than the rung below it on the samples (mean SSIM
        higher by more than 0.002) — a τ no better than a smaller one would only repeat its
        cost.

        >>> taus = {"1": [1.0], "0.9": [0.95], "0.8": [0.95], "0.7": [0.9]}
        >>> profile = Profile(16, 8, "min", taus)
        >>> profile.ladder(0.7), profile.ladder(0.9)
        ((0.8, 1.0), (1.0,))
        """
        key = f"{tau:g}"
        last = float(np.mean(self.taus[key])) if key in self.taus else -np.inf
        rungs = []
        for rung in sorted(float(t) for t in self.taus if tau < float(t) < 1.0):
            mean = float(np.mean(self.taus[f"{rung:g}"]))
            if mean > last + 0.002:
                rungs.append(rung)
                last = mean
        return (*rungs, 1.0)

    def report(self, target: float) -> str:
        """Every τ measured: its score (the criterion over the samples), the worst sample,
        and the margin to ``target``; the chosen τ marked (``quality.planner.choose(profile,
        target).explain()`` weighs every candidate, refinements included)."""
        chosen = self.tau_for(target)
        lines = [self.fitted()] if self.model is not None else []
        lines += [
            f"τ      {self.criterion:>6}  worst   margin to SSIM {target:g} "
            f"(chosen: the smallest τ with ≥ {self.margin:+.3f})"
        ]
        for key, values in sorted(self.taus.items(), key=lambda kv: -float(kv[0])):
            score = self.score(values)
            mark = "  ← chosen" if float(key) == chosen else ""
            lines.append(f"{float(key):<5g}  {score:6.3f}  {min(values):6.3f}  "
                         f"{score - target:+.3f}{mark}")  # fmt: skip
        return "\n".join(lines)

    def speedup_for(self, target: float) -> float | None:
        """The largest drill-down speedup target measured to meet ``target`` (None: none)."""
        meeting = [float(s) for s, v in self.drilldown.items() if self.score(v) >= target]
        return max(meeting, default=None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"not a krypton-ql tuning profile: {error}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise InvalidInputError(f"cannot read the tuning profile {path}: {reason}") from None
        return cls.from_json(text)
