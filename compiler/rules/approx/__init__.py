"""Approximate rules: none runs unless a query asks for approximation, and explain marks every
one of them ``≈``.

- ``threshold_projective_field`` (τ < 1): caps update boxes (a plan rewrite).
- ``adaptive_drilldown``: plans a two-stage query set (coarse everywhere, fine where the
  prediction drops most); the executor runs the exact or τ plan at each stage.
"""
