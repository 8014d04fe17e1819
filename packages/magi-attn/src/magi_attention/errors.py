"""Exception types of magi_attention (all bad-input errors subclass ValueError/TypeError)."""

from __future__ import annotations

__all__ = ["MagiAttentionError", "EnvFlagError", "KeyNotFoundError"]


class MagiAttentionError(ValueError):
    """Bad input to a magi_attention entry point (function, argument, expected vs got)."""


class EnvFlagError(MagiAttentionError):
    """An unknown value or a forbidden combination of MAGI_ATTENTION_* environment flags."""


class KeyNotFoundError(MagiAttentionError):
    """A DistAttnRuntimeKey was used whose runtime is not (or no longer) in its group's cache."""
