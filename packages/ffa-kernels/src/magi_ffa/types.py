"""Small public value types of magi_ffa: mask type codes and the forward metadata."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

__all__ = ["AttnForwardMeta", "MaskType"]


class MaskType(enum.IntEnum):
    """Int codes of the four slice mask types (shared with magi_solver, checked by a contract test).

    Cell (qs+i, ks+j) of a slice with lengths Lq, Lk is visible iff
    FULL: always; CAUSAL: j <= i + Lk - Lq (bottom-right aligned);
    INV_CAUSAL: j >= i (top-left aligned); BI_CAUSAL: both.
    """

    FULL = 0
    CAUSAL = 1
    INV_CAUSAL = 2
    BI_CAUSAL = 3


@dataclass
class AttnForwardMeta:
    """What the forward returns next to `out`.

    lse: [Sq, hq] fp32, natural-log log-sum-exp of each row's scaled logits (sink included);
        -inf for a row with no visible key and no sink.
    max_logits: [hq] fp32, the largest scaled (softcapped) logit over the visible cells of each
        head (sink excluded), -inf for a head with none; None unless requested.
    """

    lse: torch.Tensor
    max_logits: torch.Tensor | None = None
