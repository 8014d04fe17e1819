"""Exception types of magi_ffa: bad input is a ValueError/TypeError subclass naming the argument."""

from __future__ import annotations

__all__ = ["FFAInputError", "FFATypeError", "BackendUnavailableError"]


class FFAInputError(ValueError):
    """An argument has a wrong value or shape (message: function, argument, expected, got)."""


class FFATypeError(TypeError):
    """An argument has a wrong Python type or tensor dtype."""


class BackendUnavailableError(ValueError):
    """A backend forced by `backend=` or the environment cannot run these inputs."""
