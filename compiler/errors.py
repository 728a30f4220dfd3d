"""The error hierarchy shared by every layer of krypton-ql.

``krypton_ql`` re-exports these names; they live here because the compiler raises them and the
compiler never imports the front end.
"""

from __future__ import annotations


class KryptonError(Exception):
    """Base class of every error krypton-ql raises on purpose."""


class UnsupportedOperationError(KryptonError):
    """The model contains an operation the importer cannot place in a relational plan."""


class InvalidInputError(KryptonError):
    """An image, model or option is not acceptable (wrong rank, NaN, patch too large, ...).

    ``option`` names the offending option (``"patch"``, ``"stride"``, …) when there is one: the
    query language puts its caret there.

    >>> InvalidInputError("stride must be at least 1, got 0", option="stride").option
    'stride'
    """

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class ModelInputError(InvalidInputError):
    """The model does not run on inputs of the shape it was given (the front end adds how to
    ask for another number of spatial axes, where the shape alone does not say)."""
