"""How close an approximate heatmap is to exact, and what a tuning run measured.

``metrics``: SSIM as the paper defines it for heatmaps (scikit-image's, ``data_range`` the exact
heatmap's range), its estimate from a few exact samples (the quality guard's), Spearman's ρ and
top-k IoU; ``profile``: ``Profile``, the τ (and drill-down) each quality target needs, as
``kql.tune`` measured it. Nothing here computes a heatmap.
"""

from krypton_ql.quality.metrics import compare, spearman, ssim, ssim_estimate, top_iou
from krypton_ql.quality.profile import Profile

__all__ = ["Profile", "compare", "spearman", "ssim", "ssim_estimate", "top_iou"]
