"""The krypton-ql runtime: materialize views, run batched delta plans, assemble heatmaps.

``runtime.reference`` implements every physical operator in torch (CPU or CUDA); it reads
plans from ``compiler`` and never the other way round.
"""
