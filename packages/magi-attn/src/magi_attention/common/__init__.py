"""Mask geometry types (re-exported from magi_solver), the dense AttnMask and small tensor helpers.

The geometry classes live in the torch-free C++ solver; ``ranges_to_tensor`` adds the one
torch-facing conversion, and ``AttnRanges.to_tensor`` is attached to the C++ class when the
binding allows it. ``AttnMask`` (mask.py) is torch's: a dense CPU tensor of a mask, for checks.
"""

from __future__ import annotations

from magi_attention.common import enum
from magi_attention.common.mask import AttnMask
from magi_attention.common.ranges import (
    AttnForwardMeta,
    AttnMaskType,
    AttnRange,
    AttnRanges,
    AttnRectangle,
    AttnRectangles,
    RangeError,
    mask_type_code,
    mask_type_codes,
    naive_ranges,
    ranges_to_tensor,
)

USE_CPP_BACKEND = True


def is_cpp_backend_enable() -> bool:
    """Always True: the geometry types are the C++ (magi_solver) ones."""
    return True


__all__ = ["AttnRange", "AttnRanges", "AttnMaskType", "AttnMask", "AttnRectangle",
           "AttnRectangles", "RangeError", "AttnForwardMeta", "enum", "ranges_to_tensor",
           "naive_ranges", "mask_type_code", "mask_type_codes", "USE_CPP_BACKEND",
           "is_cpp_backend_enable"]
