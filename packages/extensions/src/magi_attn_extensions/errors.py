"""Exception types of magi_attn_extensions (bad input vs missing optional package)."""

from __future__ import annotations

__all__ = ["ExtensionsInputError", "ExtensionsTypeError", "OptionalDependencyError"]


class ExtensionsInputError(ValueError):
    """Bad argument value passed to a public function of magi_attn_extensions."""


class ExtensionsTypeError(TypeError):
    """Argument of the wrong type or dtype passed to a public function."""


class OptionalDependencyError(ImportError):
    """An optional integration was used but the package it wraps is not installed."""
