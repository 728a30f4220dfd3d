"""The query language at its edges: equivalent WHERE clauses return the same relation (the
classes scanned follow from the whole clause by logic), SQL's arithmetic errors are errors,
and nothing escapes as anything but a ``QueryError``."""

from __future__ import annotations

import pytest
import torch

import krypton_ql as kql
from krypton_ql.dsl.errors import QueryError
from tests import oracle
from tests.helpers import small_cnn

SCAN = "occlusion(scans, cnn, patch => 4, stride => 4)"
CLASSES = ["cat", "dog", "car", "cup"]


@pytest.fixture(scope="module")
def session() -> kql.Session:
    torch.manual_seed(1)
    session = kql.connect()
    session.register_model("cnn", small_cnn(), classes=CLASSES)
    session.register_images("scans", torch.randn(2, 3, 16, 14))
    return session


def _rows(session: kql.Session, where: str) -> list[tuple]:
    query = f"SELECT image, row, col, class, prob FROM {SCAN} WHERE {where} ORDER BY 1, 2, 3, 4"
    return session.sql(query, progress=False).rows


@pytest.mark.parametrize(
    "where",
    [
        "class = 1 OR class = 2",
        "(class = 2) OR (1 = class)",
        "NOT (class <> 1 AND class <> 2)",
        "class BETWEEN 1 AND 2",
        "label = 'dog' OR label = 'car'",
        "class = 1 OR label = 'car'",
        "class > 0 AND class < 3",
    ],
)
def test_equivalent_class_predicates_return_the_same_relation(session, where) -> None:
    expected = _rows(session, "class IN (1, 2)")
    assert {row[3] for row in expected} == {1, 2}
    assert _rows(session, where) == expected


def test_a_predicate_mixing_class_and_positions_scans_the_classes_it_allows(session) -> None:
    """``class = 1 OR row = 0`` holds for class 1 everywhere and for every class on row 0;
    the probabilities are the independent loop's."""
    rows = _rows(session, "class = 1 OR row = 0")
    model = session._models["cnn"].get()
    images = session._images["scans"].items
    expected = set()
    for name, image in images.items():
        for target in range(len(CLASSES)):
            heatmap = oracle.heatmap(model, image, 4, 4, target=target)
            for (r, c), value in zip(
                [(r, c) for r in range(heatmap.shape[0]) for c in range(heatmap.shape[1])],
                heatmap.flatten().tolist(),
            ):
                if target == 1 or r == 0:
                    expected.add((name, r, c, target, round(value, 5)))
    assert {(i, r, c, k, round(p, 5)) for i, r, c, k, p in rows} == expected


def test_a_class_predicate_that_bounds_nothing_scans_every_class(session) -> None:
    assert {row[3] for row in _rows(session, "class <> 1")} == {0, 2, 3}
    assert _rows(session, "class = 1 AND class = 2") == []
    mixed = _rows(session, "(class = 1 AND row = 0) OR (class = 2 AND col = 1)")
    assert {(row[3], row[1] == 0, row[2] == 1) for row in mixed} <= {
        (1, True, True), (1, True, False), (2, True, True), (2, False, True),
    }  # fmt: skip


def test_a_long_chain_of_ors_is_evaluated_not_a_recursion_error(session) -> None:
    chain = " OR ".join(f"class = {i % 4}" for i in range(3000))
    assert {row[3] for row in _rows(session, chain)} == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("select", "message"),
    [
        ("prob / 0", "Division by zero"),
        ("1 / 0", "Division by zero"),
        ("7 % 0", "Division by zero"),
        ("image * 2", "No function matches"),
        ("avg(label)", "No function matches"),
    ],
)
def test_arithmetic_errors_are_query_errors(session, select, message) -> None:
    with pytest.raises(QueryError, match=message):
        session.sql(f"SELECT {select} AS x FROM {SCAN} WHERE class = 1", progress=False)


def test_sql_arithmetic_and_aggregates_over_groups(session) -> None:
    rows = session.sql(
        f"SELECT class, sum(1) AS n, -7 % 3 AS r FROM {SCAN} WHERE class IN (0, 3) "
        "GROUP BY class ORDER BY class",
        progress=False,
    ).rows
    cells = 2 * 4 * 4  # two images × a 4×4 grid (the last column clipped at the border)
    assert [(c, int(n), r) for c, n, r in rows] == [(0, cells, -1), (3, cells, -1)]
    assert len(_rows(session, "TRUE")) == cells  # no class read: each image's predicted class
    assert len(_rows(session, "class = class")) == 4 * cells  # read, not bounded: every class
