"""Approximate rules: none runs unless a query asks for approximation, and explain marks every
one of them ``≈``.

- ``threshold_projective_field`` (τ < 1): caps update boxes (a plan rewrite).

Adaptive drill-down, the other approximation, is not a rewrite: ``compiler.drilldown`` plans
its two stages of queries and ``krypton_ql.plans.drilldown`` runs the exact or τ plan at each.
"""
