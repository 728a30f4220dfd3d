"""A tour of the occlusion query language on the built-in model and photos.

    python examples/query_tour.py [--patch 56] [--stride 56]

The defaults use a coarse grid so that the tour runs in seconds on a CPU; try
``--patch 16 --stride 8`` for real heatmaps.
"""

from __future__ import annotations

import argparse

import krypton_ql as kql


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=56)
    parser.add_argument("--stride", type=int, default=56)
    args = parser.parse_args()
    source = (
        f"occlusion(photos, efficientnet_lite0, patch => {args.patch}, stride => {args.stride})"
    )
    session = kql.connect()  # knows efficientnet_lite0 and the photos already

    print("-- the predicted class of every photo, and its heatmap")
    result = session.sql(
        f"SELECT image, class, base_prob, heatmap(prob) AS h FROM {source} "
        "GROUP BY image, class, base_prob ORDER BY image"
    )
    print(result, "\nheatmaps:", tuple(result.heatmaps.shape), "\n")

    print("-- where hiding the rocket hurts 'missile' (657) and 'projectile' (744) most")
    print(
        session.sql(
            f"SELECT class, y, x, drop FROM {source} WHERE image = 'rocket' "
            "AND class IN (657, 744) ORDER BY drop DESC LIMIT 4"
        ),
        "\n",
    )
    print(f"({session.last_queries} occlusion queries ran: one image, two classes in one pass)")

    print("\n-- a restricted region: predicates on y, x, row, col are pushed into the plan")
    text = session.explain(
        f"SELECT y, x, prob FROM {source} WHERE image = 'coffee' AND y < 100 AND x >= 50"
    )
    print("\n".join(text.splitlines()[:5]))

    print("\n-- the two regions per photo whose occlusion hurts most (a window function)")
    print(
        session.sql(
            f"SELECT image, label, y, x, round(drop, 4) AS drop FROM {source} "
            "QUALIFY rank() OVER (PARTITION BY image ORDER BY drop DESC) <= 2 "
            "ORDER BY image, 5 DESC"
        ),
        "\n",
    )
    print("-- exact against approximate (τ = 0.6), compared in SQL; the exact side is cached")
    approximate = source.replace(")", ", tau => 0.6)")
    print(
        session.sql(
            f"SELECT e.image, round(max(abs(e.prob - a.prob)), 5) AS worst_error "
            f"FROM {source} e JOIN {approximate} a USING (image, row, col, class) "
            "GROUP BY e.image ORDER BY 1"
        ),
        "\n",
    )
    print("-- a user table joined with the heatmap rows")
    import pyarrow as pa

    session.register_table(
        "truth", pa.table({"image": ["chelsea", "coffee"], "truth": ["tabby", "espresso"]})
    )
    print(
        session.sql(
            f"SELECT o.image, t.truth, o.label AS predicted, o.label = t.truth AS right "
            f"FROM {source} o JOIN truth t USING (image) GROUP BY ALL ORDER BY 1"
        )
    )

    print("\n-- mistakes are pointed at")
    try:
        session.sql(f"SELECT y, x, dorp FROM {source}")
    except kql.QueryError as error:
        print(error)


if __name__ == "__main__":
    main()
