"""What a statement computes, as the query language binds it, without running anything: its
occlusion calls (images, model, options, whether the statement chooses their classes) and its
heatmap columns (the name each gets, the column each aggregates). Front ends ask this instead of
reading the query text (``kql query``'s colour scale and ``--compare-exact``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from krypton_ql.dsl.bind import Bound, bind
from krypton_ql.dsl.parse import parse
from krypton_ql.options import APPROXIMATE


@dataclass(frozen=True)
class ScanOutline:
    """One ``occlusion(…)`` call."""

    images: str
    model: str
    options: dict[str, Any]
    names_classes: bool  # a class predicate or the target option chooses its classes

    @property
    def approximate(self) -> bool:
        return bool(APPROXIMATE & set(self.options))


@dataclass(frozen=True)
class HeatmapOutline:
    """One ``heatmap(v)`` column: its name (None: DuckDB names it) and what ``v`` is (a
    column's name, else the expression's SQL)."""

    name: str | None
    of: str


@dataclass(frozen=True)
class Outline:
    scans: tuple[ScanOutline, ...]
    heatmaps: tuple[HeatmapOutline, ...]

    @property
    def approximate(self) -> bool:
        """Whether any occlusion call asks for an approximation."""
        return any(scan.approximate for scan in self.scans)

    def heatmap(self, column: str) -> HeatmapOutline | None:
        """The heatmap that makes the result column ``column`` (the only one, if the statement
        has one heatmap whatever it is called)."""
        named = [h for h in self.heatmaps if h.name == column]
        if named:
            return named[0]
        return self.heatmaps[0] if len(self.heatmaps) == 1 else None


def describe(query: str) -> Outline:
    """The outline of ``query`` (parsed and bound; errors point at the text as ``sql``'s do)."""
    statement = parse(query)
    return Outline((), ()) if statement.tree is None else outline(bind(statement))


def outline(bound: Bound) -> Outline:
    scans = tuple(
        ScanOutline(
            scan.images,
            scan.model,
            dict(scan.options),
            scan.reads_class or "target" in scan.options,
        )  # fmt: skip
        for scan in bound.scans
    )
    heatmaps = []
    for heatmap in bound.heatmaps:
        parent = heatmap.node.parent
        name = parent.alias if isinstance(parent, exp.Alias) else None
        argument = heatmap.node.expressions[0] if heatmap.node.expressions else None
        of = argument.name if isinstance(argument, exp.Column) else (
            argument.sql() if argument is not None else ""
        )  # fmt: skip
        heatmaps.append(HeatmapOutline(name or None, of))
    return Outline(scans, tuple(heatmaps))
