"""Segment scans in the query language: ``occlusion(images, model, segments => …)`` rows equal
the independent oracle's region ablation, ``heatmap()`` paints each segment, explain shows the
buckets, and mistakes point at the option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import krypton_ql as kql
from krypton_ql import segments
from krypton_ql.dsl.errors import QueryError
from tests import oracle
from tests.helpers import small_cnn

SCAN = "occlusion(scans, cnn, segments => 'slic', n_segments => 12)"


@pytest.fixture(scope="module")
def session() -> kql.Session:
    torch.manual_seed(3)
    session = kql.connect()
    session.register_model("cnn", small_cnn(), classes=["a", "b", "c", "d"])
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 4, 4), size=(20, 18), mode="bilinear")
    session.register_images("scans", smooth)  # SLIC merges noise into one segment
    return session


def _images(session: kql.Session) -> torch.Tensor:
    return torch.stack([session.load_image("scans", n, "cnn") for n in ("0", "1")])


def test_rows_equal_the_oracle_with_slic_segments(session) -> None:
    result = session.sql(
        f"SELECT image, segment, area, y, x, height, width, class, label, prob, base_prob, drop "
        f"FROM {SCAN} ORDER BY image, segment",
        progress=False,
    )
    images, model = _images(session), session.model("cnn").get()
    rows = result.rows
    assert len(rows) > 20, "too few segments to test"
    at = 0
    for n, name in enumerate(("0", "1")):
        labels = segments.segment(images[n], "slic", n_segments=12)  # what the scan made
        assert torch.equal(labels, session.segments_of(name))
        ids, expected = oracle.ablate(model, images[n : n + 1], labels)
        klass = int(model(images[n : n + 1]).argmax())
        base = float(oracle.clean_score(model, images[n], target=klass))
        for s, label in enumerate(ids):
            image, segment, area, y, x, height, width, chosen, named, prob, base_prob, drop = rows[
                at
            ]
            at += 1
            where = (labels == label).nonzero()
            assert (image, segment, chosen, named) == (name, label, klass, "abcd"[klass])
            assert area == len(where)
            assert (y, x) == tuple(where.min(0).values.tolist())
            assert (height, width) == tuple(
                (where.max(0).values - where.min(0).values + 1).tolist()
            )
            assert prob == pytest.approx(float(expected[0, s]), abs=1e-5)
            assert base_prob == pytest.approx(base, abs=1e-5)
            assert drop == pytest.approx(base - float(expected[0, s]), abs=1e-5)
    assert at == len(rows)


def test_heatmap_paints_each_segment_with_its_value(session) -> None:
    result = session.sql(
        f"SELECT image, heatmap(drop) AS h FROM {SCAN} WHERE segment <> 0 GROUP BY image "
        "ORDER BY image",
        progress=False,
    )
    images, model = _images(session), session.model("cnn").get()
    assert [r[0] for r in result.rows] == ["0", "1"] and result.heatmaps.shape == (2, 20, 18)
    for n in range(2):
        labels = session.segments_of(str(n))
        ids, scores = oracle.ablate(model, images[n : n + 1], labels)
        base = float(
            oracle.clean_score(model, images[n], target=int(model(images[n : n + 1]).argmax()))
        )
        painted = result.heatmaps[n]
        for s, label in enumerate(ids):
            values = painted[labels == label]
            if label == 0:  # filtered out by the WHERE clause: no value
                assert torch.isnan(values).all()
            else:
                assert torch.allclose(values, torch.tensor(base - float(scores[0, s])), atol=1e-5)


def test_registered_label_images_and_classes_from_the_where_clause(session) -> None:
    labels = torch.zeros(20, 18, dtype=torch.int64)
    labels[:, 9:] = 5  # two halves
    labels[3, 2] = 7  # one pixel
    labels[10:, :4] = 2  # an L with the left half's lower part
    session.register_segments("mine", {"0": labels.flip(1).contiguous(), "1": labels})
    result = session.sql(
        "SELECT image, class, segment, prob FROM occlusion(scans, cnn, segments => 'mine') "
        "WHERE class IN (1, 3) AND image = '1' ORDER BY class, segment",
        progress=False,
    )
    images, model = _images(session), session.model("cnn").get()
    expected = []
    for klass in (1, 3):
        ids, scores = oracle.ablate(model, images[1:], labels, target=klass)
        expected += [("1", klass, label, float(scores[0, s])) for s, label in enumerate(ids)]
    assert [r[:3] for r in result.rows] == [e[:3] for e in expected]
    assert [r[3] for r in result.rows] == pytest.approx([e[3] for e in expected], abs=1e-5)
    assert session.last_queries == 2 * 4  # one image, two classes, four segments


def test_one_label_image_for_every_image_from_a_file(session, tmp_path) -> None:
    labels = np.arange(20 * 18).reshape(20, 18) // 60  # six horizontal bands
    np.save(tmp_path / "bands.npy", labels)
    session.register_segments("bands", tmp_path / "bands.npy")
    result = session.sql(
        "SELECT image, count(*) AS n, sum(area) AS pixels FROM occlusion(scans, cnn, "
        "segments => 'bands', color => 0.5) GROUP BY image ORDER BY image",
        progress=False,
    )
    assert result.rows == [("0", 6, 360), ("1", 6, 360)]
    drops = session.sql(
        "SELECT segment, prob FROM occlusion(scans, cnn, segments => 'bands', color => 0.5) "
        "WHERE image = '0' ORDER BY segment",
        progress=False,
    )
    _, scores = oracle.ablate(session.model("cnn").get(), _images(session)[:1],
                              torch.from_numpy(labels), baseline=0.5)  # fmt: skip
    assert [r[1] for r in drops.rows] == pytest.approx(scores[0].tolist(), abs=1e-5)


def test_a_second_statement_is_answered_from_the_cache_until_the_weights_change() -> None:
    torch.manual_seed(1)
    session = kql.connect()
    model = small_cnn()
    session.register_model("cnn", model)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4), size=(16, 16), mode="bilinear")
    session.register_images("scans", smooth)
    query = f"SELECT segment, prob FROM {SCAN} ORDER BY segment"
    first = session.sql(query, progress=False)
    again = session.sql(query, progress=False)
    assert session.last_cached == 1 and session.last_queries == 0 and again.rows == first.rows
    with torch.no_grad():
        model[0].weight.mul_(0.5)
    changed = session.sql(query, progress=False)
    assert session.last_queries > 0
    image = session.load_image("scans", "0", "cnn")
    _, scores = oracle.ablate(model, image[None], session.segments_of("0"))
    assert [r[1] for r in changed.rows] == pytest.approx(scores[0].tolist(), abs=1e-5)


def test_explain_shows_the_segmentation_and_the_buckets(session) -> None:
    text = session.explain(f"SELECT * FROM {SCAN} WHERE image = '0'")
    assert "== segments ==" in text and "slic(n_segments=12)" in text
    labels = session.segments_of("0")
    assert f"0: {len(labels.unique())} segments" in text
    assert f"{len(labels.unique())} regions in" in text and "plans; boxes hold" in text


@pytest.mark.parametrize(
    "query, message, at",
    [
        ("SELECT * FROM occlusion(scans, cnn, segments => 'slic', patch => 4)",
         "option 'patch' slides a patch", "patch => 4"),
        ("SELECT * FROM occlusion(scans, cnn, patch => 4, n_segments => 4)",
         "belongs to a segment scan", "n_segments => 4"),
        ("SELECT * FROM occlusion(scans, cnn, segments => 'nope')",
         "unknown segments 'nope'", "segments => 'nope'"),
        ("SELECT * FROM occlusion(scans, cnn, segments => 3)",
         "segments => is a scikit-image method", "segments => 3"),
        ("SELECT * FROM occlusion(scans, cnn, segments => 'slic', n_segments => 4, "
         "max_plans => 0)", "max_plans must be at least 1", "max_plans => 0"),
        ("SELECT * FROM occlusion(scans, cnn, segments => 'slic', bucket_ratio => 1)",
         "bucket_ratio must be a number > 1", "bucket_ratio => 1"),
        ("SELECT * FROM occlusion(scans, cnn, segments => 'slic', n_segments => 'many')",
         "slic:", "segments => 'slic'"),
        ("SELECT heatmap(drop) FROM occlusion(scans, cnn, segments => 'slic', n_segments => 4)",
         "paints one image: GROUP BY image", None),
    ],
)  # fmt: skip
def test_mistakes_are_reported_at_the_option(session, query, message, at) -> None:
    with pytest.raises(QueryError) as raised:
        session.sql(query, progress=False)
    assert message in str(raised.value)
    if at is not None:
        error = raised.value
        line = query.split("\n")[error.line - 1]
        assert line[error.col - 1 :].startswith(at), str(error)


def test_label_images_of_the_wrong_shape_or_type_are_refused(session) -> None:
    from compiler.errors import InvalidInputError

    session.register_segments("small", torch.zeros(5, 5, dtype=torch.int64))
    with pytest.raises(
        QueryError, match=r"are \[5, 5\], the model input's spatial axes are \[20, 18\]"
    ):
        session.sql("SELECT * FROM occlusion(scans, cnn, segments => 'small')", progress=False)
    with pytest.raises(InvalidInputError, match="not an integer array|holds integers"):
        session.register_segments("floats", torch.rand(20, 18))
    with pytest.raises(InvalidInputError, match="names a segmentation method"):
        session.register_segments("slic", torch.zeros(20, 18, dtype=torch.int64))
    with pytest.raises(QueryError, match="runs in this process"):
        session.sql(f"SELECT * FROM {SCAN}", engine="local", progress=False)


@pytest.mark.parametrize("spatial", [(24,), (6, 7, 5)])
def test_signals_and_volumes_with_registered_labels(spatial) -> None:
    torch.manual_seed(2)
    d = len(spatial)
    conv = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[d - 1]
    pool = (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d)
    model = torch.nn.Sequential(conv(2, 4, 3, padding=1), torch.nn.ReLU(), pool[d - 1](1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()  # fmt: skip
    session = kql.connect()
    session.register_model("net", model)
    session.register_images("inputs", [torch.randn(2, *spatial)])
    labels = torch.randint(0, 4, spatial)
    labels.reshape(-1)[0] = 9  # a one-cell segment at the first corner
    session.register_segments("parts", labels)
    result = session.sql(
        "SELECT segment, area, z, y, x, depth, height, width, prob FROM occlusion(inputs, net, "
        "segments => 'parts', score => 'logit') ORDER BY segment",
        progress=False,
    )
    image = session.load_image("inputs", "0", "net")
    ids, scores = oracle.ablate(model, image[None], labels, score="logit")
    assert [r[0] for r in result.rows] == ids
    for row, label, score in zip(result.rows, ids, scores[0].tolist()):
        where = (labels == label).nonzero()
        first, last = where.min(0).values.tolist(), where.max(0).values.tolist()
        pad = 3 - d
        assert row[1] == len(where)
        assert list(row[2:5]) == [0] * pad + first
        assert list(row[5:8]) == [1] * pad + [b - a + 1 for a, b in zip(first, last)]
        assert row[8] == pytest.approx(score, abs=1e-4)


def test_segment_predicates_choose_the_segments_computed(session) -> None:
    """``WHERE segment IN (…)`` or ``area > …`` is pushed into the scan: only those segments
    run, and the rows equal the full scan's."""
    everything = session.sql(
        f"SELECT image, segment, area, prob FROM {SCAN} ORDER BY image, segment", progress=False
    ).rows
    chosen = [row for row in everything if row[1] in (1, 3) or row[2] > 40]
    query = (f"SELECT image, segment, area, prob FROM {SCAN} WHERE (segment IN (1, 3) OR "
             "area > 40) AND image IN ('0', '1') ORDER BY image, segment")  # fmt: skip
    result = session.sql(query, progress=False)
    assert session.last_queries == len(chosen) and 0 < len(chosen) < len(everything)
    assert [r[:3] for r in result.rows] == [r[:3] for r in chosen]
    assert [r[3] for r in result.rows] == pytest.approx([r[3] for r in chosen], abs=1e-6)
    text = session.explain(query)
    assert "segments computed: those where" in text
    assert (
        f"0: {sum(r[0] == '0' for r in chosen)} of {sum(r[0] == '0' for r in everything)}" in text
    )
    nothing = session.sql(f"SELECT count(*) FROM {SCAN} WHERE area < 0", progress=False)
    assert nothing.rows == [(0,)] and session.last_queries == 0
