"""Whole-number settings read from the environment, checked the same way everywhere in magi_ffa."""

from __future__ import annotations

import os

__all__ = ["int_from_env"]


def int_from_env(name: str, default: int, minimum: int, meaning: str) -> int:
    """``name``'s value as an int (``default`` when unset or blank); a ValueError naming the variable
    when it is not a whole number >= ``minimum`` (``meaning`` says what the number is)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{name}={raw!r}: expected a whole number >= {minimum} ({meaning})")
    return value
