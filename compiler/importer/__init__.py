"""Exported ATen graph -> logical plan.

``export`` runs ``torch.export`` on the model at the compiled input shape (shapes are static, so
shape checks and shape-dependent branches are resolved there). ``import_model`` walks the
exported graph once and translates every node with the table in ``compiler.importer.translators``:

- the image placeholder becomes ``Input`` followed by the query's ``Occlude``;
- a node whose inputs are all model tensors is folded to a constant at import;
- an in-place operator is translated as its functional form: export already makes every later
  reader of the written tensor read the in-place node; a write that reaches a tensor through a
  view (``y[:, :2].mul_(3)``) is functionalized by ``run_decompositions`` first;
- an operator no translator places in space becomes an exact fallback node (``Aten``) that
  runs as the model ran it on full per-query tensors; explain shows why.

Every value carries its ``Layout`` (where the image's rows and columns are), so permutes and
reshapes that keep them are free and per-position operators on channels stay local.

Its parts: ``exporting`` (``export``, ``probe``), ``walk`` (``import_model``, ``ImportContext``),
``fallback`` (the exact fallback's programs), ``context`` (the ``Context`` protocol translators
see) and ``translators`` (one function per ATen operator or family).
"""

from compiler.importer.exporting import Exported, export, probe, written_state
from compiler.importer.walk import import_model

__all__ = ["Exported", "export", "import_model", "probe", "written_state"]
