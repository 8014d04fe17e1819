"""Solver geometry re-exports plus torch-side conversions of ranges and mask types.

Why here: magi_solver is torch-free, so converting ranges to int32 tensors, and accepting the
many spellings users pass (AttnRanges, list of pairs, [N, 2] tensors; enum, str or int mask
types), is done once in this module for every entry point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from magi_attention import _compat
from magi_attention.errors import MagiAttentionError

__all__ = ["AttnRange", "AttnRanges", "AttnMaskType", "AttnRectangle",
           "AttnRectangles", "RangeError", "AttnForwardMeta", "ranges_to_tensor",
           "naive_ranges", "checked_slices", "mask_type_code", "mask_type_codes", "MASK_NAME_TO_CODE",
           "make_attn_ranges", "make_mask_types"]


def _missing(module_name: str, name: str) -> type:
    """A placeholder for a lower-package name that has not landed in the installed version."""

    class _Missing:
        def __init__(self, *a: Any, **k: Any) -> None:
            raise ImportError(f"{module_name}.{name} is not available in the installed "
                              f"{module_name}; upgrade it (see contracts.md).")

    _Missing.__name__ = name
    return _Missing


def _from(module, name: str):
    obj = getattr(module, name, None)
    return obj if obj is not None else _missing(module.__name__, name)


AttnRange = _from(_compat.solver, "AttnRange")
AttnRanges = _from(_compat.solver, "AttnRanges")
AttnMaskType = _from(_compat.solver, "AttnMaskType")
AttnRectangle = _from(_compat.solver, "AttnRectangle")
AttnRectangles = _from(_compat.solver, "AttnRectangles")
RangeError = getattr(_compat.solver, "RangeError", None) or type("RangeError", (ValueError,), {})
AttnForwardMeta = _from(_compat.ffa, "AttnForwardMeta")

# Int codes of the contract: FULL 0, CAUSAL 1, INV_CAUSAL 2, BI_CAUSAL 3.
MASK_NAME_TO_CODE = {"full": 0, "causal": 1, "inv_causal": 2, "invcausal": 2,
                     "bi_causal": 3, "bicausal": 3}


def mask_type_code(t: Any, *, fn: str = "mask_type_code", arg: str = "attn_mask_type") -> int:
    """Map an AttnMaskType, its string value/name or its int code to the int code 0..3."""
    if isinstance(t, bool):
        raise MagiAttentionError(f"{fn}(): {arg}={t!r} is not a mask type")
    if isinstance(t, int):
        if 0 <= t <= 3:
            return int(t)
        raise MagiAttentionError(f"{fn}(): {arg}={t} is not a mask type code; expected 0..3")
    to_int = getattr(t, "to_int_type", None)
    if callable(to_int):
        return int(to_int())
    for attr in ("value", "name"):
        val = getattr(t, attr, None)
        if isinstance(val, str) and val.lower() in MASK_NAME_TO_CODE:
            return MASK_NAME_TO_CODE[val.lower()]
    if isinstance(t, str) and t.lower() in MASK_NAME_TO_CODE:
        return MASK_NAME_TO_CODE[t.lower()]
    raise MagiAttentionError(f"{fn}(): {arg}={t!r} is not a mask type; expected one of "
                             "'full', 'causal', 'inv_causal', 'bi_causal', an AttnMaskType or 0..3")


def mask_type_codes(types: Any, n: int, *, fn: str) -> tuple[int, ...]:
    """Broadcast a scalar mask type to ``n`` slices, or check a sequence has length ``n``."""
    if isinstance(types, torch.Tensor):
        types = types.tolist()
    if isinstance(types, (str, int)) or not isinstance(types, Sequence):
        return (mask_type_code(types, fn=fn),) * n
    if len(types) != n:
        raise MagiAttentionError(f"{fn}(): attn_mask_type has {len(types)} entries but there are "
                                 f"{n} slices; pass one type per slice or a single type")
    return tuple(mask_type_code(t, fn=fn, arg=f"attn_mask_type[{i}]") for i, t in enumerate(types))


def naive_ranges(ranges: Any, *, fn: str = "naive_ranges",
                 arg: str = "ranges") -> tuple[tuple[int, int], ...]:
    """Normalise AttnRanges / list of pairs / int [N, 2] tensor to a tuple of (start, end)."""
    if isinstance(ranges, torch.Tensor):
        if ranges.dim() != 2 or (ranges.numel() and ranges.shape[1] != 2):
            raise MagiAttentionError(f"{fn}(): {arg} tensor must be [N, 2], got {list(ranges.shape)}")
        ranges = ranges.tolist()
    elif hasattr(ranges, "to_naive_ranges"):
        ranges = ranges.to_naive_ranges()
    out = []
    for i, r in enumerate(ranges):
        if hasattr(r, "start") and hasattr(r, "end"):
            s, e = r.start, r.end
        else:
            try:
                s, e = r
            except (TypeError, ValueError):
                raise MagiAttentionError(f"{fn}(): {arg}[{i}]={r!r} is not a (start, end) pair") from None
        s, e = int(s), int(e)
        if s < 0 or e < s:
            raise MagiAttentionError(f"{fn}(): {arg}[{i}]=({s}, {e}) is invalid; each range needs "
                                     "0 <= start <= end")
        out.append((s, e))
    return tuple(out)


def checked_slices(q_ranges: Any, k_ranges: Any, mask_types: Any, *,
                   fn: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[int]]:
    """(q ranges, k ranges, type codes) of a slice mask given in any accepted spelling, as lists;
    MagiAttentionError naming ``fn`` and the argument when they do not make one slice each."""
    qr = list(naive_ranges(q_ranges, fn=fn, arg="q_ranges"))
    kr = list(naive_ranges(k_ranges, fn=fn, arg="k_ranges"))
    if len(qr) != len(kr):
        raise MagiAttentionError(f"{fn}(): q_ranges has {len(qr)} ranges but k_ranges has "
                                 f"{len(kr)}; each slice needs one of each")
    return qr, kr, list(mask_type_codes(mask_types, len(qr), fn=fn))


def ranges_to_tensor(ranges: Any, device: Any = "cpu") -> torch.Tensor:
    """AttnRanges (or pairs) -> int32 [N, 2] tensor; the empty case gives shape [0, 2]."""
    pairs = naive_ranges(ranges, fn="ranges_to_tensor")
    if not pairs:
        return torch.empty((0, 2), dtype=torch.int32, device=device)
    return torch.tensor(pairs, dtype=torch.int32, device=device)


def _attach_to_tensor() -> None:
    cls = getattr(_compat.solver, "AttnRanges", None)
    if cls is None or hasattr(cls, "to_tensor"):
        return
    try:
        cls.to_tensor = lambda self, device="cpu": ranges_to_tensor(self, device)
    except (TypeError, AttributeError):  # a sealed binding: ranges_to_tensor stays available
        pass


_attach_to_tensor()


def make_attn_ranges(pairs: Sequence[tuple[int, int]]):
    """Build a solver AttnRanges from (start, end) pairs."""
    return AttnRanges.from_ranges([tuple(p) for p in pairs])


def make_mask_types(codes: Sequence[int]) -> list:
    """Build AttnMaskType members from int codes (0..3)."""
    return [AttnMaskType.from_int_type(int(c)) for c in codes]
