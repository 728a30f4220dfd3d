"""The query language under mutation: valid statements with characters deleted, duplicated
or swapped and tokens inserted. Every mutant runs or raises a ``QueryError`` (a
``KryptonError`` with line and column) — never another exception, a hang or a crash."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import krypton_ql as kql
from krypton_ql.dsl.errors import QueryError
from tests.helpers import small_cnn
from tests.profiles import examples

SCAN = "occlusion(scans, cnn, patch => 4, stride => 4)"
SEEDS = [
    f"SELECT image, heatmap(prob) AS h FROM {SCAN} GROUP BY image",
    f"SELECT row, col, prob FROM {SCAN} WHERE class IN (1, 2) AND row < 2 ORDER BY prob LIMIT 3",
    f"SELECT class, avg(drop) FROM {SCAN} WHERE label = 'dog' OR class = 0 GROUP BY class",
    f"EXPLAIN SELECT * FROM {SCAN}",
    "SELECT * FROM occlusion(scans, cnn, patch => 4, stride => 4, tau => 0.9) WHERE x > 2",
]
TOKENS = [
    "(", ")", ",", "'", '"', "=>", "=", "/", "%", "0", "-1", "1e400", "NULL", "NOT", "AND",
    "OR", "SELECT", "FROM", "WHERE", "class", "heatmap(", "occlusion(", "patch", "tau => 2",
    "ORDER BY", "1/0", ";", "--", "/*", "\\", "\n", "é", "\x00",
]  # fmt: skip


@pytest.fixture(scope="module")
def session() -> kql.Session:
    torch.manual_seed(2)
    session = kql.connect()
    session.register_model("cnn", small_cnn(), classes=["cat", "dog", "car", "cup"])
    session.register_images("scans", torch.randn(1, 3, 12, 12))
    return session


@st.composite
def mutants(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "duplicate", "insert", "swap"]))
        if kind == "delete" and text:
            at = min(at, len(text) - 1)
            text = text[:at] + text[at + 1 :]
        elif kind == "duplicate":
            text = text[:at] + text[max(0, at - 3) : at] + text[at:]
        elif kind == "insert":
            text = text[:at] + " " + draw(st.sampled_from(TOKENS)) + " " + text[at:]
        elif len(text) > 1:
            at = min(at, len(text) - 2)
            text = text[:at] + text[at + 1] + text[at] + text[at + 2 :]
    return text


@settings(max_examples=examples(150), deadline=None)
@given(statement=mutants())
def test_a_mutated_statement_runs_or_raises_a_query_error(session, statement) -> None:
    try:
        session.sql(statement, progress=False)
    except QueryError as error:
        assert error.line >= 1 and error.col >= 1, (statement, str(error))
