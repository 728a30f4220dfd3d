"""DuckDB runs everything after the occlusion scan: all of its SQL works on occlusion
relations, user tables join with them, results leave as Arrow, pandas and Parquet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import krypton_ql as kql
from tests import oracle
from tests.helpers import small_cnn

SCAN = "occlusion(scans, cnn, patch => 4, stride => 4)"


@pytest.fixture(scope="module")
def session() -> kql.Session:
    torch.manual_seed(1)
    session = kql.connect()
    session.register_model("cnn", small_cnn(), classes=["cat", "dog", "car", "cup"])
    session.register_images("scans", torch.randn(3, 3, 16, 14))
    return session


def _model_and_image(session: kql.Session, name: str):
    return session._models["cnn"].get(), session._images["scans"].items[name]


def test_heatmap_is_float32_and_equals_the_python_api(session) -> None:
    result = session.sql(f"SELECT image, heatmap(prob) AS h FROM {SCAN} GROUP BY image ORDER BY 1")
    model = session._models["cnn"].get()
    images = torch.stack(list(session._images["scans"].items.values()))
    expected = kql.occlusion_heatmap(model, images, patch=4, stride=4)
    assert result.heatmaps.dtype == torch.float32
    assert torch.equal(result.heatmaps, expected)


def test_window_function_top_regions_per_image(session) -> None:
    result = session.sql(
        f"SELECT image, row, col, drop, rank() OVER (PARTITION BY image ORDER BY drop DESC) AS r "
        f"FROM {SCAN} QUALIFY r <= 2 ORDER BY image, r"
    )
    assert [row[0] for row in result.rows] == ["0", "0", "1", "1", "2", "2"]
    for name in "012":
        model, image = _model_and_image(session, name)
        drops = oracle.clean_score(model, image) - oracle.heatmap(model, image, 4, 4)
        top = sorted(((float(d), r, c) for (r, c), d in np.ndenumerate(drops.numpy())))[-2:]
        got = [(row[1], row[2]) for row in result.rows if row[0] == name]
        assert got == [(r, c) for _, r, c in reversed(top)]


def test_cte_having_case_like_casts_round_ordinals_union(session) -> None:
    result = session.sql(
        f"""WITH cells AS (SELECT image, class, label, prob, drop FROM {SCAN} WHERE class IN (0, 1))
        SELECT image, label, round(avg(prob), 3)::VARCHAR AS mean,
               CASE WHEN max(drop) > 0 THEN 'hurts' ELSE 'no effect' END AS verdict
        FROM cells WHERE label LIKE 'c%' GROUP BY 1, 2 HAVING count(*) = 16
        UNION ALL SELECT 'none', 'none', '0', 'none'
        ORDER BY 1"""
    )
    assert [row[:2] for row in result.rows] == [
        ("0", "cat"),
        ("1", "cat"),
        ("2", "cat"),
        ("none", "none"),
    ]
    model, image = _model_and_image(session, "1")
    expected = float(oracle.heatmap(model, image, 4, 4, target=0).mean())
    assert float(result.rows[1][2]) == pytest.approx(expected, abs=5e-4)


def test_exact_and_approximate_compared_in_sql(session) -> None:
    result = session.sql(
        f"SELECT e.image, max(abs(e.prob - a.prob)) AS err, count(*) AS n FROM {SCAN} e "
        "JOIN occlusion(scans, cnn, patch => 4, stride => 4, tau => 0.4) a "
        "USING (image, row, col, class) GROUP BY e.image ORDER BY 1"
    )
    assert [row[2] for row in result.rows] == [16, 16, 16]
    errors = [row[1] for row in result.rows]
    assert all(e >= 0 for e in errors) and max(errors) > 0  # τ = 0.4 is visibly approximate
    assert "== pushdown (call 2 of 2: a) ==" in session.explain(
        f"SELECT * FROM {SCAN} e JOIN occlusion(scans, cnn, patch => 4, tau => 0.4) a USING (row)"
    )


def test_text_versus_number_casts_or_raises(session) -> None:
    """DuckDB's type semantics: '1' = 1 casts the name; 'cat' = 1 raises; never a silent
    empty result."""
    rows = session.sql(f"SELECT DISTINCT image FROM {SCAN} WHERE image = 1").rows
    assert rows == [("1",)]
    with pytest.raises(kql.QueryError, match="Could not convert string 'cat'"):
        session.sql(f"SELECT * FROM {SCAN} WHERE label = 1")


def test_user_tables_join_with_occlusion_results(session, tmp_path) -> None:
    pandas = pytest.importorskip("pandas")
    session.register_table("patients", pandas.DataFrame({"image": ["0", "2"], "age": [71, 34]}))
    csv = tmp_path / "labels.csv"
    csv.write_text("image,truth\n0,cat\n1,dog\n2,cup\n")
    session.register_table("truth", csv)
    parquet = tmp_path / "sites.parquet"
    pq.write_table(pa.table({"image": ["0", "1", "2"], "site": ["a", "b", "a"]}), parquet)
    session.register_table("sites", parquet)
    session.register_table("weights", pa.table({"class": [0, 1], "w": [1.0, 2.0]}))
    session.cache.clear()
    result = session.sql(
        f"SELECT o.image, p.age, t.truth, s.site, max(o.drop * w.w) AS worst FROM {SCAN} o "
        "JOIN patients p USING (image) JOIN truth t USING (image) JOIN sites s USING (image) "
        "JOIN weights w USING (class) WHERE o.class = 1 GROUP BY ALL ORDER BY 1"
    )
    assert [row[:4] for row in result.rows] == [("0", 71, "cat", "a"), ("2", 34, "cup", "a")]
    assert session.last_queries == 3 * 16  # the class pushed down; images are a join, not pushed
    assert {"patients", "truth", "sites", "weights"} <= set(session.tables())
    with pytest.raises(kql.KryptonError, match="register_table takes"):
        session.register_table("bad", 3)


def test_results_as_arrow_pandas_and_parquet(session, tmp_path) -> None:
    pytest.importorskip("pandas")
    result = session.sql(
        f"SELECT image, count(*) AS n, heatmap(drop) AS h FROM {SCAN} GROUP BY image ORDER BY 1"
    )
    table = result.arrow()
    assert table.column_names == ["image", "n", "h"] and table.num_rows == 3
    frame = result.df()
    assert list(frame["n"]) == [16, 16, 16] and frame["h"][0].shape == (4, 4)
    assert np.array_equal(frame["h"][2], result.heatmaps[2].numpy())
    path = result.to_parquet(tmp_path / "r.parquet")
    assert pq.read_table(path).column("n").to_pylist() == [16, 16, 16]


def test_a_database_file_keeps_created_tables(tmp_path) -> None:
    torch.manual_seed(2)
    path = tmp_path / "heatmaps.duckdb"
    first = kql.connect(path)
    first.register_model("cnn", small_cnn())
    first.register_images("scans", torch.randn(2, 3, 16, 14))
    first.sql(f"CREATE TABLE cells AS SELECT * FROM {SCAN}")
    expected = first.sql(
        f"SELECT image, heatmap(prob) AS h FROM {SCAN} GROUP BY image ORDER BY image"
    ).heatmaps
    first.engine.connection.close()
    second = kql.connect(path)
    result = second.sql("SELECT image, heatmap(prob) AS h FROM cells GROUP BY image ORDER BY 1")
    assert torch.equal(result.heatmaps, expected)  # the grid is read off the rows
    assert second.last_queries == 0 and "cells" in second.tables()


def test_statements_without_occlusion_are_plain_duckdb(session) -> None:
    assert session.sql("SELECT 1 + 1 AS two;").rows == [(2,)]
    with pytest.raises(kql.QueryError, match="one statement at a time"):
        session.sql("SELECT 1; SELECT 2")
    assert "Projection" in session.explain("SELECT 1 + 1 AS two")  # DuckDB's own plan
    with pytest.raises(kql.QueryError) as raised:
        session.sql("SELECT 1 +\nFROM nowhere")
    assert raised.value.line == 2 and "^" in raised.value.excerpt


def test_the_clean_forward_is_not_repeated(session) -> None:
    session.cache.clear()
    session.sql(f"SELECT count(*) FROM {SCAN} WHERE row = 0")
    plan = session.last_plan
    before = plan.clean_forwards_reused
    session.sql(f"SELECT count(*) FROM {SCAN} WHERE row = 1")  # not covered: a new scan
    assert session.last_queries == 3 * 4 and plan.clean_forwards_reused == before + 1


def test_pushdown_preserves_meaning(session) -> None:
    """Predicates are pushed only where that cannot change the answer: inside a CTE, yes;
    above an outer join, no (there a pushed filter would turn rows into null-extended ones)."""
    session.cache.clear()
    inside = session.sql(f"WITH s AS (SELECT * FROM {SCAN} WHERE row = 0) SELECT count(*) FROM s")
    assert inside.rows == [(3 * 4,)] and session.last_queries == 3 * 4
    session.register_table("one", pa.table({"image": ["0"]}))
    outer = session.sql(
        f"SELECT count(*) FROM one t LEFT JOIN {SCAN} o ON o.image = t.image AND o.row = 1 "
        "WHERE o.row = 0 OR o.row IS NULL"
    )
    assert outer.rows == [(0,)]  # pushing the WHERE below the join would count 1
    assert session.last_queries == 3 * 16  # nothing pushed: every position computed
