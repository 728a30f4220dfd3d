"""The krypton-ql compiler: torch.export import, relational IR, IVM rewrite rules, cost model,
explain.

Data flows one way: ``importer.import_model`` (exported ATen graph -> logical plan),
``pipeline.optimize`` (logical -> rewritten plan, one rule at a time), ``lower.lower``
(rewritten -> physical plan).
Nothing here imports triton or sqlglot, and nothing here holds a tensor: weights and views are
referenced by handle and bound by the runtime.
"""
