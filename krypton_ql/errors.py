"""Errors raised by krypton-ql (defined in ``compiler.errors``, re-exported here)."""

from compiler.errors import InvalidInputError, KryptonError, UnsupportedOperationError

__all__ = ["InvalidInputError", "KryptonError", "UnsupportedOperationError"]
