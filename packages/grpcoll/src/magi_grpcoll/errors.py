"""Exceptions raised by magi_grpcoll (bad input is a ValueError subclass, so callers can catch either)."""

from __future__ import annotations

__all__ = ["GrpCollError"]


class GrpCollError(ValueError):
    """Bad input to a group collective: split sizes, rank indices, dtypes or cross-rank disagreement.

    In collectives every rank raises it (the sanity check exchanges meta first), so no rank is left
    waiting in a collective that the others never enter.
    """
